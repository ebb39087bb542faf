//! `GET /v1/stats?window=15m[&scope=node]`: the traffic series each node
//! keeps (`crate::stats`), of this node alone or, by default, of the whole
//! cluster: the node asked gathers every member's steps and sums them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{AdminState, ApiError};
use crate::stats::{parse_window, ClusterSeries, NodeStats};

/// The query of `GET /v1/stats`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    /// e.g. `15m` (the default), `60s`.
    window: Option<String>,
    /// `cluster` (the default) or `node`.
    scope: Option<String>,
}

pub(super) async fn stats(
    State(s): State<Arc<AdminState>>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let window_text = q.window.unwrap_or_else(|| "15m".into());
    let window = parse_window(&window_text).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let here = s.stats.node_stats(window);
    let answer = match q.scope.as_deref() {
        Some("node") => serde_json::to_value(here),
        None | Some("cluster") => {
            let mut nodes = vec![here];
            let mut unreachable = std::collections::BTreeMap::new();
            if let Some(c) = &s.cluster {
                let ids: Vec<u64> = c.view().meta().nodes.keys().copied().collect();
                let asked = super::cluster::ask_members(c, ids, Duration::from_secs(2), move |a| {
                    Ok(serde_json::from_value::<NodeStats>(
                        a.stats(&window_text, true)?,
                    )?)
                })
                .await;
                for (id, r) in asked {
                    match r {
                        Ok(n) => nodes.push(n),
                        Err(e) => {
                            unreachable.insert(id, e.to_string());
                        }
                    }
                }
            }
            nodes.sort_by_key(|n| n.node);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut merged = ClusterSeries::merge(&nodes, window, now);
            merged.unreachable = unreachable;
            serde_json::to_value(merged)
        }
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("scope {other:?}: expected cluster or node"),
            ))
        }
    };
    answer
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
