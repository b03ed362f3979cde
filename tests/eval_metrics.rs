//! The evaluation metrics (src/eval/) against sacrebleu 2.6 and rouge-score 0.1.2 (with and without
//! its stemmer): every corpus and
//! per-sample figure of tests/golden/eval/metrics.json (from scripts/reference/eval_goldens.py)
//! recomputed in Rust, within 1e-9 (each port keeps its reference's order of floating-point
//! operations, so the differences are 0 in practice; the largest is printed).

use recipe::eval::{Metric, TextOptions, score_texts};
use serde_json::Value;

const BOUND: f64 = 1e-9;

fn golden() -> Value {
    let text = std::fs::read_to_string("tests/golden/eval/metrics.json").expect("golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

#[test]
fn every_figure_equals_the_reference_libraries() {
    let doc = golden();
    let sets = doc["sets"].as_array().expect("sets");
    let metrics = Metric::parse_list("sacrebleu,chrf,ter,rouge,exact_match").unwrap();
    let (mut compared, mut worst, mut failures) = (0usize, 0.0f64, Vec::new());
    let mut check = |place: String, got: Option<&Value>, want: &Value| {
        let want = want.as_f64().expect("golden figure");
        let got = got.and_then(Value::as_f64).unwrap_or(f64::NAN);
        let diff = (got - want).abs();
        compared += 1;
        if diff.is_nan() || diff > BOUND {
            failures.push(format!("{place}: recipe {got:?}, reference {want:?}"));
        } else {
            worst = worst.max(diff);
        }
    };
    for set in sets {
        let name = set["name"].as_str().unwrap();
        let samples = set["samples"].as_array().unwrap();
        let predictions: Vec<&str> = samples.iter().map(|s| s["prediction"].as_str().unwrap()).collect();
        let references: Vec<&str> = samples.iter().map(|s| s["reference"].as_str().unwrap()).collect();
        let (corpus, per_sample) = score_texts(TextOptions::default(), &metrics, &predictions, &references);
        let stemmer = TextOptions { rouge_stemmer: true };
        let (corpus_stemmed, per_sample_stemmed) = score_texts(stemmer, &[Metric::Rouge], &predictions, &references);
        for (key, want) in set["corpus"].as_object().unwrap() {
            check(format!("{name} corpus {key}"), corpus.get(key), want);
        }
        for (key, want) in set["corpus_stemmed"].as_object().unwrap() {
            check(format!("{name} corpus {key} (stemmer)"), corpus_stemmed.get(key), want);
        }
        for (i, (sample, got)) in samples.iter().zip(&per_sample).enumerate() {
            for (key, want) in sample["stemmed"].as_object().unwrap() {
                let place = format!("{name} sample {i} {key} (stemmer; {:?} vs {:?})", predictions[i], references[i]);
                check(place, per_sample_stemmed[i].get(key), want);
            }
            for (key, want) in sample.as_object().unwrap() {
                if !matches!(key.as_str(), "prediction" | "reference" | "stemmed") {
                    check(
                        format!("{name} sample {i} {key} ({:?} vs {:?})", predictions[i], references[i]),
                        got.get(key),
                        want,
                    );
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {compared} figures differ:\n{}", failures.len(), failures.join("\n"));
    assert!(compared > 1000, "only {compared} figures compared");
    println!("{compared} figures equal to sacrebleu / rouge-score; largest difference {worst:e}");
}
