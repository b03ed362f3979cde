//! The side-by-side review of two targets (`recipe eval A B`): `eval_report.md` and a
//! self-contained `eval_report.html` (no scripts or styles from the network; a few lines of inline
//! script sort the table by any column) with each sample's prompt, reference and both answers with
//! their scores, rows ordered by the difference B - A of one metric, and an inline SVG chart of
//! the per-sample differences.

use serde_json::{Map, Value};
use std::fmt::Write;

/// One evaluated sample of both targets.
pub struct Row {
    pub prompt: String,
    pub reference: String,
    pub answer_a: String,
    pub answer_b: String,
    pub scores_a: Map<String, Value>,
    pub scores_b: Map<String, Value>,
}

/// What the report shows.
pub struct Review<'a> {
    pub target_a: &'a str,
    pub target_b: &'a str,
    /// The per-sample score the rows are ordered by (e.g. `chrf`); for perplexity, lower is better.
    pub key: &'a str,
    pub corpus_a: &'a Map<String, Value>,
    pub corpus_b: &'a Map<String, Value>,
    pub rows: &'a [Row],
}

fn score(m: &Map<String, Value>, key: &str) -> Option<f64> {
    m.get(key).and_then(Value::as_f64)
}

/// Whether a higher value of `key` is better (TER and perplexity: lower is).
pub fn higher_is_better(key: &str) -> bool {
    !matches!(key, "ter" | "perplexity")
}

impl Review<'_> {
    /// B - A of `key` per row.
    fn differences(&self) -> Vec<Option<f64>> {
        self.rows.iter().map(|r| Some(score(&r.scores_b, self.key)? - score(&r.scores_a, self.key)?)).collect()
    }

    /// Row indices, the most improved by B first (improvement measured in `key`'s good direction).
    fn order(&self) -> Vec<usize> {
        let d = self.differences();
        let sign = if higher_is_better(self.key) { 1.0 } else { -1.0 };
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by(|&x, &y| {
            let (a, b) = (d[x].map_or(f64::NEG_INFINITY, |v| sign * v), d[y].map_or(f64::NEG_INFINITY, |v| sign * v));
            b.total_cmp(&a).then(x.cmp(&y))
        });
        order
    }

    fn metric_keys(&self) -> Vec<&str> {
        self.corpus_a.keys().filter(|k| self.corpus_b.contains_key(*k)).map(String::as_str).collect()
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Evaluation: {} (A) vs {} (B)\n", self.target_a, self.target_b);
        let _ = writeln!(s, "| metric | A | B | B - A |\n|---|---:|---:|---:|");
        for k in self.metric_keys() {
            let (a, b) = (score(self.corpus_a, k), score(self.corpus_b, k));
            let _ = writeln!(s, "| {k} | {} | {} | {} |", fmt(a), fmt(b), fmt(a.zip(b).map(|(a, b)| b - a)));
        }
        let _ = writeln!(s, "\nSamples, the most improved by B in `{}` first:\n", self.key);
        let _ = writeln!(
            s,
            "| # | {k} A | {k} B | B - A | prompt | reference | A | B |\n|---:|---:|---:|---:|---|---|---|---|",
            k = self.key
        );
        let d = self.differences();
        for i in self.order() {
            let r = &self.rows[i];
            let _ = writeln!(
                s,
                "| {i} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(score(&r.scores_a, self.key)),
                fmt(score(&r.scores_b, self.key)),
                fmt(d[i]),
                md_cell(&r.prompt),
                md_cell(&r.reference),
                md_cell(&r.answer_a),
                md_cell(&r.answer_b)
            );
        }
        s
    }

    /// The HTML report (one file, nothing fetched).
    pub fn html(&self) -> String {
        let mut s = String::new();
        let title = format!("Evaluation: {} (A) vs {} (B)", self.target_a, self.target_b);
        let _ = write!(
            s,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
            esc(&title),
            esc(&title)
        );
        s.push_str("<table class=\"summary\"><tr><th>metric</th><th>A</th><th>B</th><th>B &minus; A</th></tr>\n");
        for k in self.metric_keys() {
            let (a, b) = (score(self.corpus_a, k), score(self.corpus_b, k));
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(k),
                fmt(a),
                fmt(b),
                fmt(a.zip(b).map(|(a, b)| b - a))
            );
        }
        s.push_str("</table>\n");
        let _ = writeln!(
            s,
            "<h2>Per-sample difference in {} (B &minus; A), {}</h2>\n{}",
            esc(self.key),
            if higher_is_better(self.key) { "higher is better" } else { "lower is better" },
            self.chart()
        );
        let keys: Vec<&str> =
            self.rows.first().map(|r| r.scores_a.keys().map(String::as_str).collect()).unwrap_or_default();
        s.push_str("<h2>Samples</h2>\n<p>Click a column header to sort.</p>\n<table id=\"samples\"><thead><tr><th data-num>#</th>");
        let _ = write!(s, "<th data-num>&Delta; {}</th>", esc(self.key));
        s.push_str("<th>prompt</th><th>reference</th><th>A</th><th>B</th>");
        for k in &keys {
            let _ = write!(s, "<th data-num>{} A</th><th data-num>{} B</th>", esc(k), esc(k));
        }
        s.push_str("</tr></thead><tbody>\n");
        let d = self.differences();
        for i in self.order() {
            let r = &self.rows[i];
            let _ = write!(
                s,
                "<tr><td>{i}</td><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td><pre>{}</pre></td><td><pre>{}</pre></td>",
                fmt(d[i]),
                esc(&r.prompt),
                esc(&r.reference),
                esc(&r.answer_a),
                esc(&r.answer_b)
            );
            for k in &keys {
                let _ = write!(s, "<td>{}</td><td>{}</td>", fmt(score(&r.scores_a, k)), fmt(score(&r.scores_b, k)));
            }
            s.push_str("</tr>\n");
        }
        let _ = write!(s, "</tbody></table>\n<script>{SORT}</script>\n</body></html>\n");
        s
    }

    /// Bars of B - A per sample, in the table's order (most improved left), zero line across.
    fn chart(&self) -> String {
        let d = self.differences();
        let sign = if higher_is_better(self.key) { 1.0 } else { -1.0 };
        let values: Vec<f64> = self.order().into_iter().filter_map(|i| d[i]).collect();
        let (w, h, pad) = (640.0f64, 160.0f64, 4.0f64);
        let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
        let bar = (w - 2.0 * pad) / values.len().max(1) as f64;
        let mid = h / 2.0;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"per-sample differences\">\n"
        );
        for (k, v) in values.iter().enumerate() {
            let len = v.abs() / max * (mid - pad);
            let y = if *v >= 0.0 { mid - len } else { mid };
            let better = sign * v >= 0.0;
            let _ = writeln!(
                s,
                "<rect x=\"{:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{len:.2}\" fill=\"{}\"><title>{v:.4}</title></rect>",
                pad + k as f64 * bar,
                (bar * 0.9).max(0.5),
                if better { "#2a9d4b" } else { "#c0392b" }
            );
        }
        let _ = writeln!(s, "<line x1=\"0\" y1=\"{mid}\" x2=\"{w}\" y2=\"{mid}\" stroke=\"#555\" stroke-width=\"1\"/>");
        let _ = writeln!(
            s,
            "<text x=\"{pad}\" y=\"12\" font-size=\"11\">+{max:.3}</text><text x=\"{pad}\" y=\"{}\" font-size=\"11\">-{max:.3}</text>",
            h - 4.0
        );
        s.push_str("</svg>");
        s
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.4}"))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A Markdown table cell: pipes escaped, newlines as <br>, HTML characters escaped.
fn md_cell(s: &str) -> String {
    esc(s).replace('|', "\\|").replace('\n', "<br>")
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}\
th{background:#f3f3f3;cursor:pointer;white-space:nowrap}\
pre{white-space:pre-wrap;margin:0;min-width:14em;max-width:28em;font-family:inherit}\
table.summary td:not(:first-child),#samples td:nth-child(-n+2),#samples td:nth-child(n+7)\
{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}";

/// Sorts #samples by the clicked column (numeric where the header says so); a second click reverses.
const SORT: &str = "document.querySelectorAll('#samples th').forEach(function(th,i){th.addEventListener('click',function(){\
var tb=document.querySelector('#samples tbody'),rows=Array.from(tb.rows),num=th.hasAttribute('data-num');\
var dir=th.dataset.dir==='desc'?1:-1;th.dataset.dir=dir===1?'asc':'desc';\
rows.sort(function(a,b){var x=a.cells[i].textContent,y=b.cells[i].textContent;\
if(num){x=parseFloat(x);y=parseFloat(y);x=isNaN(x)?-Infinity:x;y=isNaN(y)?-Infinity:y;return dir*(x-y);}\
return dir*x.localeCompare(y);});rows.forEach(function(r){tb.appendChild(r);});});});";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orders_by_improvement_and_escapes() {
        let m = |v: f64| json!({"chrf": v}).as_object().unwrap().clone();
        let rows = vec![
            Row {
                prompt: "p<0>".into(),
                reference: "r".into(),
                answer_a: "a".into(),
                answer_b: "b|c".into(),
                scores_a: m(50.0),
                scores_b: m(40.0),
            },
            Row {
                prompt: "p1".into(),
                reference: "r".into(),
                answer_a: "a".into(),
                answer_b: "b".into(),
                scores_a: m(10.0),
                scores_b: m(60.0),
            },
        ];
        let corpus = m(1.0);
        let review = Review {
            target_a: "base",
            target_b: "tuned",
            key: "chrf",
            corpus_a: &corpus,
            corpus_b: &corpus,
            rows: &rows,
        };
        assert_eq!(review.order(), [1, 0]);
        let html = review.html();
        assert!(html.contains("p&lt;0&gt;") && html.contains("<svg"));
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
        let md = review.markdown();
        assert!(md.contains("b\\|c") && md.find("| 1 |").unwrap() < md.find("| 0 |").unwrap(), "{md}");
    }
}
