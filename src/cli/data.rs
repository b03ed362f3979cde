//! `recipe preview` and `recipe preprocess`: the data pipeline's commands (no libtorch needed).

use super::{EXIT_INVALID, compile_recipe};
use crate::data::{self, IGNORE, Sample, Tokenizer, cache, packing, preference};
use crate::plan::{Plan, PlanOptions};
use serde_json::json;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

/// A data error of `recipe`, printed; the exit code for it.
fn data_error(recipe: &Path, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("{}: error[data]: {e}", recipe.display());
    ExitCode::from(EXIT_INVALID)
}

fn load(recipe: &Path, overrides: &[String]) -> Result<(Plan, Tokenizer, std::path::PathBuf), ExitCode> {
    let plan = compile_recipe(recipe, overrides, PlanOptions::default())?;
    let fail = |e: String| data_error(recipe, e);
    let dir = crate::plan::model::tokenizer_folder(&plan.model).map_err(fail)?;
    let mut tok = Tokenizer::load(&dir).map_err(fail)?;
    tok.add(&plan.data.special_tokens, &plan.data.added_tokens).map_err(fail)?;
    Ok((plan, tok, dir))
}

/// Runs of (text, trained) of a sample, decoded by prefix so run boundaries keep their spaces.
pub fn runs(tok: &Tokenizer, s: &Sample) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut decoded_len = 0;
    let mut start = 0;
    // Token t is "trained" when the model learns to predict it (its label is not -100).
    let trained = |i: usize| s.labels.get(i).is_some_and(|&l| l != IGNORE) && i > 0;
    for end in 1..=s.input_ids.len() {
        if end < s.input_ids.len() && trained(end) == trained(start) {
            continue;
        }
        let text = tok.decode_with_special(&s.input_ids[..end]);
        let piece = text.get(decoded_len..).unwrap_or_default().to_string();
        decoded_len = text.len();
        out.push((piece, trained(start)));
        start = end;
    }
    out
}

pub fn preview(recipe: &Path, overrides: &[String], n: usize, as_json: bool) -> ExitCode {
    let (plan, tok, dir) = match load(recipe, overrides) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if plan.training.reads_pairs() {
        return preview_pairs(recipe, &plan, &tok, &dir, n, as_json);
    }
    let prepared = match data::prepare(&plan, &tok, &dir) {
        Ok(p) => p,
        Err(e) => return data_error(recipe, e),
    };
    let seq_len = plan.data.sequence_len as usize;
    let rows = if plan.data.sample_packing {
        packing::pack(&prepared.train, seq_len)
    } else {
        packing::unpacked(&prepared.train, seq_len)
    };
    let efficiency = packing::efficiency(&rows, seq_len);
    let shown: Vec<&Sample> = prepared.train.iter().take(n).collect();
    if as_json {
        let samples: Vec<_> = shown
            .iter()
            .map(|s| {
                json!({
                    "tokens": s.input_ids.len(),
                    "trained_tokens": s.trained_tokens(),
                    "input_ids": s.input_ids,
                    "labels": s.labels,
                    "runs": runs(&tok, s).into_iter().map(|(text, trained)| json!({"text": text, "trained": trained})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let layout: Vec<_> = rows.iter().take(n).map(segment_lengths).collect();
        let out = json!({
            "report": prepared.report,
            "train_samples": prepared.train.len(),
            "validation_samples": prepared.validation.len(),
            "test_samples": prepared.test.len(),
            "samples": samples,
            "packing": {"enabled": plan.data.sample_packing, "rows": rows.len(), "efficiency": efficiency, "first_rows": layout},
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("serializes"));
        return ExitCode::SUCCESS;
    }
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for line in &prepared.report {
        println!("data     {line}");
    }
    println!(
        "samples  {} training, {} validation, {} test",
        prepared.train.len(),
        prepared.validation.len(),
        prepared.test.len()
    );
    println!(
        "legend   {}",
        if color {
            "trained text as is, \u{1b}[2mmasked text dimmed\u{1b}[0m"
        } else {
            "trained text as is, [[masked text]] in double brackets"
        }
    );
    for (i, s) in shown.iter().enumerate() {
        println!(
            "\n── sample {} of {}: {} tokens, {} trained",
            i + 1,
            prepared.train.len(),
            s.input_ids.len(),
            s.trained_tokens()
        );
        let mut text = String::new();
        for (piece, trained) in runs(&tok, s) {
            match (trained, color) {
                (true, _) => text.push_str(&piece),
                (false, true) => text.push_str(&format!("\u{1b}[2m{piece}\u{1b}[0m")),
                (false, false) => text.push_str(&format!("[[{piece}]]")),
            }
        }
        println!("{text}");
    }
    println!(
        "\npacking  {}: {} rows of {seq_len}, efficiency {:.1}% (real tokens / slots)",
        if plan.data.sample_packing { "on" } else { "off" },
        rows.len(),
        100.0 * efficiency
    );
    for (i, r) in rows.iter().take(n).enumerate() {
        let lens = segment_lengths(r);
        println!(
            "         row {}: {} = {} of {seq_len}",
            i + 1,
            lens.iter().map(usize::to_string).collect::<Vec<_>>().join(" + "),
            r.len()
        );
    }
    ExitCode::SUCCESS
}

/// `recipe preview` of an `rl:` recipe: preference pairs as the model will see them.
fn preview_pairs(recipe: &Path, plan: &Plan, tok: &Tokenizer, dir: &Path, n: usize, as_json: bool) -> ExitCode {
    let prepared = match preference::prepare(plan, tok, dir) {
        Ok(p) => p,
        Err(e) => return data_error(recipe, e),
    };
    let shown: Vec<&preference::Pair> = prepared.train.iter().take(n).collect();
    let longest = prepared.train.iter().map(preference::Pair::len).max().unwrap_or(0);
    if as_json {
        let out = json!({
            "report": prepared.report,
            "train_pairs": prepared.train.len(),
            "validation_pairs": prepared.validation.len(),
            "test_pairs": prepared.test.len(),
            "longest_pair_tokens": longest,
            "pairs": shown,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("serializes"));
        return ExitCode::SUCCESS;
    }
    for line in &prepared.report {
        println!("data     {line}");
    }
    println!(
        "pairs    {} training, {} validation, {} test; longest pair {longest} of {} tokens (prompt + longer answer)",
        prepared.train.len(),
        prepared.validation.len(),
        prepared.test.len(),
        plan.data.sequence_len
    );
    for (i, p) in shown.iter().enumerate() {
        // A pair's two answers, or KTO's unpaired row: one answer and its label.
        let (kind, answers, note) = match p.desirable {
            Some(desirable) => {
                ("row", vec![("answer", &p.chosen_ids)], if desirable { " (desirable)" } else { " (undesirable)" })
            }
            None => ("pair", vec![("chosen", &p.chosen_ids), ("rejected", &p.rejected_ids)], ""),
        };
        let counts: Vec<String> = answers.iter().map(|(label, ids)| format!("{label} {}", ids.len())).collect();
        println!(
            "\n── {kind} {} of {} ({}): prompt {} tokens, {}{note}",
            i + 1,
            prepared.train.len(),
            p.origin,
            p.prompt_ids.len(),
            counts.join(", ")
        );
        for (label, ids) in std::iter::once(("prompt", &p.prompt_ids)).chain(answers) {
            println!("{label:<9}{}", tok.decode_with_special(ids));
        }
        // A token merged across the join in one answer's sequence only: its own prompt ids.
        if let Some(ids) = &p.rejected_prompt_ids {
            println!("the rejected answer's prompt ({} tokens): {}", ids.len(), tok.decode_with_special(ids));
        }
    }
    ExitCode::SUCCESS
}

fn segment_lengths(r: &packing::Row) -> Vec<usize> {
    let mut lens: Vec<usize> = Vec::new();
    let mut last = None;
    for &s in &r.segment_ids {
        if Some(s) == last {
            *lens.last_mut().expect("a segment") += 1;
        } else {
            lens.push(1);
            last = Some(s);
        }
    }
    lens
}

pub fn preprocess(recipe: &Path, overrides: &[String]) -> ExitCode {
    let (plan, tok, dir) = match load(recipe, overrides) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if plan.training.reads_pairs() {
        let training = match &plan.training.preference {
            Some(p) => format!("rl: {}", p.method),
            None => "a reward model".to_string(),
        };
        // Every pair is checked; pairs are not cached (recipe run prepares them itself).
        return match preference::prepare(&plan, &tok, &dir) {
            Ok(prepared) => {
                for line in &prepared.report {
                    println!("data     {line}");
                }
                println!(
                    "checked  {} training, {} validation, {} test preference pairs for {training} (pairs are not cached: \
                     recipe run prepares them)",
                    prepared.train.len(),
                    prepared.validation.len(),
                    prepared.test.len(),
                );
                ExitCode::SUCCESS
            }
            Err(e) => data_error(recipe, e),
        };
    }
    let Some(root) = plan.data.prepared_path.clone() else {
        return data_error(recipe, "set dataset_prepared_path to say where the prepared data goes");
    };
    let result = (|| {
        let key = cache::key(&plan, &dir)?;
        let folder = cache::folder(Path::new(&root), &key);
        let start = std::time::Instant::now();
        let prepared = data::prepare(&plan, &tok, &dir)?;
        let secs = start.elapsed().as_secs_f64();
        cache::save(&folder, &prepared)?;
        Ok::<_, String>((folder, prepared, secs))
    })();
    match result {
        Ok((folder, p, secs)) => {
            for line in &p.report {
                println!("data     {line}");
            }
            let tokens: usize = p.train.iter().chain(&p.validation).chain(&p.test).map(|s| s.input_ids.len()).sum();
            println!(
                "prepared {} training, {} validation, {} test samples ({tokens} tokens) in {secs:.2} s ({:.0} tokens/s)",
                p.train.len(),
                p.validation.len(),
                p.test.len(),
                tokens as f64 / secs.max(1e-9)
            );
            println!("cached   {}", folder.display());
            ExitCode::SUCCESS
        }
        Err(e) => data_error(recipe, e),
    }
}
