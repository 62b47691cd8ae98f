//! `/console/insights`: the summary, top features and plan growth (a server-rendered SVG),
//! from the same functions as the insights API.

use std::collections::BTreeMap;
use std::fmt::Write;

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::error::ConsoleResult;
use super::session::Console;
use super::{render, Layout};
use crate::api::insights::{
    plan_growth_of, summary_of, top_features_of, PlanGrowthArgs, PlanGrowthPoint, SummaryView,
    TopFeaturesArgs,
};
use crate::api::AppState;

#[derive(Template)]
#[template(path = "console/insights.html")]
struct Page {
    layout: Layout,
    summary: SummaryView,
    /// `(feature, usage, change, checks, allowed)`.
    top: Vec<(String, i64, String, i64, i64)>,
    chart: String,
}

const COLORS: &[&str] = &[
    "#2457c5", "#1b7f3b", "#b3261e", "#8a5a00", "#6b3fa0", "#00707a",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Subscribers per plan over time as an SVG line chart (one line per plan, a legend).
pub fn growth_svg(points: &[PlanGrowthPoint]) -> String {
    let mut by_plan: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    let mut dates: Vec<i64> = points.iter().map(|p| p.date.timestamp()).collect();
    dates.sort_unstable();
    dates.dedup();
    for p in points {
        by_plan
            .entry(p.plan_name.as_str())
            .or_default()
            .push((p.date.timestamp(), p.subscribers));
    }
    let (w, h, pad) = (640.0, 220.0, 32.0);
    let max = points
        .iter()
        .map(|p| p.subscribers)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x_of = |t: i64| {
        let i = dates.iter().position(|d| *d == t).unwrap_or(0) as f64;
        pad + i * (w - 2.0 * pad) / ((dates.len().max(2) - 1) as f64)
    };
    let y_of = |v: i64| h - pad - (v as f64) * (h - 2.0 * pad) / max;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {}\" width=\"{w}\" role=\"img\" aria-label=\"Subscribers per plan per month\" data-testid=\"plan-growth-chart\">",
        h + 20.0 * by_plan.len() as f64
    );
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#999\"/><text x=\"2\" y=\"{pad}\" font-size=\"11\">{max}</text><text x=\"2\" y=\"{0}\" font-size=\"11\">0</text>",
        h - pad,
        w - pad
    );
    for (i, (plan, series)) in by_plan.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = series
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x_of(*t), y_of(*v)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        let ly = h + 14.0 + 20.0 * i as f64;
        let _ = write!(
            svg,
            "<rect x=\"{pad}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{ly}\" font-size=\"12\">{}</text>",
            ly - 10.0,
            pad + 18.0,
            escape(plan)
        );
    }
    svg.push_str("</svg>");
    svg
}

pub async fn page(State(state): State<AppState>, console: Console) -> ConsoleResult<Response> {
    let auth = console.auth();
    let summary = summary_of(&state, &auth).await?;
    let (top, _) = top_features_of(&state, &auth, &TopFeaturesArgs::default()).await?;
    let (growth, _) = plan_growth_of(
        &state,
        &auth,
        &PlanGrowthArgs {
            months: Some(6),
            ..Default::default()
        },
    )
    .await?;
    render(&Page {
        layout: Layout::new(&state, &console),
        summary,
        top: top
            .features
            .into_iter()
            .map(|f| {
                (
                    format!("{} ({})", f.feature_name, f.feature_key),
                    f.usage,
                    f.change_pct
                        .map_or_else(|| "—".into(), |c| format!("{c:+.0}%")),
                    f.checks,
                    f.allowed_checks,
                )
            })
            .collect(),
        chart: growth_svg(&growth.points),
    })
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn legend_names_are_escaped() {
        assert_eq!(escape("<Pro & \"Co\">"), "&lt;Pro &amp; &quot;Co&quot;&gt;");
    }
}
