//! `GET /`: the status page, one self-contained HTML file embedded in the
//! binary (no external assets, so it works on an isolated network). Its
//! script reads `GET /v1/status` and `GET /v1/stats?window=15m` from the
//! node that served it and redraws every few seconds; everything it shows
//! comes from those two documents.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("status_page.html");

pub(super) async fn status_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
