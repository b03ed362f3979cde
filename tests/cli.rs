//! End-to-end tests of the `recipe` binary: exit codes, output formats, overrides, layering.

use assert_cmd::Command;
use predicates::prelude::*;

/// Runs the command, expects success, and parses its stdout as JSON.
fn json_of(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_slice(&cmd.assert().success().get_output().stdout).unwrap()
}

fn recipe() -> Command {
    let mut cmd = Command::cargo_bin("recipe").unwrap();
    cmd.env("NO_COLOR", "1");
    cmd
}

#[test]
fn valid_recipes_exit_0_and_directories_are_walked_recursively() {
    recipe()
        .args(["validate", "recipes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("checked: 0 invalid, 0 errors"))
        .stdout(predicate::str::is_match(r"(?m)^(7|[89]|\d\d+) files checked").unwrap());
}

#[test]
fn invalid_recipes_exit_1_with_file_line_col() {
    recipe()
        .args(["validate", "tests/fixtures/invalid/typo.yaml", "recipes/llama2-7b-lora.yaml"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("tests/fixtures/invalid/typo.yaml:12:1: error[unknown-key]"))
        .stdout(predicate::str::contains("did you mean `lora_r`?"))
        .stdout(predicate::str::contains("2 files checked: 1 invalid"));
}

#[test]
fn unreadable_paths_and_empty_directories_exit_2() {
    recipe().args(["validate", "no/such/recipe.yaml"]).assert().code(2);
    let dir = tempfile::tempdir().unwrap();
    recipe().args(["validate"]).arg(dir.path()).assert().code(2).stderr(predicate::str::contains("no recipe files"));
    recipe().args(["validate"]).assert().code(2);
    recipe().args(["frobnicate"]).assert().code(2);
}

#[test]
fn json_format_has_the_machine_fields() {
    let out = recipe()
        .args(["validate", "--format", "json", "tests/fixtures/invalid/typo.yaml"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let first = &report["diagnostics"][0];
    assert_eq!(first["file"], "tests/fixtures/invalid/typo.yaml");
    assert_eq!(first["line"], 12);
    assert_eq!(first["column"], 1);
    assert_eq!(first["key_path"], "lora_rr");
    assert_eq!(first["rule"], "unknown-key");
    assert_eq!(first["suggestion"], "lora_r");
    assert_eq!(report["errors"], 2);
}

#[test]
fn set_overrides_are_yaml_typed_and_checked() {
    recipe()
        .args(["validate", "recipes/llama2-7b-lora.yaml", "--set", "lora_r=32", "--set", "lora_alpha=64"])
        .assert()
        .success();
    recipe()
        .args(["validate", "recipes/llama2-7b-lora.yaml", "--set", "lora_r=\"32\""])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("`lora_r` must be an integer"));
    recipe()
        .args(["validate", "recipes/llama2-7b-lora.yaml", "--set", "datasets.0.type=chat_template"])
        .assert()
        .success();
    recipe().args(["validate", "recipes/llama2-7b-lora.yaml", "--set", "lora_r"]).assert().code(2);
}

#[test]
fn warnings_fail_only_with_deny_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yaml");
    std::fs::write(
        &path,
        "base_model: meta-llama/Llama-2-7b-hf\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n\
         datasets: [{path: a/b, type: alpaca}]\nnum_epochs: 3\nlearning_rate: 2.0e-4\nsequence_len: 1024\n",
    )
    .unwrap();
    recipe().arg("validate").arg(&path).assert().success().stdout(predicate::str::contains("warning[table-lora-rank]"));
    recipe().arg("validate").arg("--deny-warnings").arg(&path).assert().code(1);
}

#[test]
fn sharded_training_validates_and_the_plan_lays_out_its_units_and_what_is_not_built() {
    let set = ["--set", "fsdp=[full_shard, auto_wrap]"];
    recipe()
        .args(["validate", "recipes/llama2-7b-lora.yaml"])
        .args(set)
        .assert()
        .success()
        .stdout(predicate::str::contains("warning[sharding-setting-not-built]").not());
    recipe()
        .args(["plan", "recipes/llama2-7b-lora.yaml"])
        .args(set)
        .env("WORLD_SIZE", "8")
        .env("LOCAL_WORLD_SIZE", "8")
        .assert()
        .success()
        .stdout(predicate::str::contains("layout     full_shard across 8 rank(s)"))
        .stdout(predicate::str::contains("fsdp: [full_shard, auto_wrap]: parameters, gradients and optimizer states"))
        .stdout(predicate::str::contains("units: each LlamaDecoderLayer and the root"));
    // Offload validates without a warning; the plan moves the offloaded bytes to host memory.
    let offload = ["--set", "fsdp=[full_shard, auto_wrap, offload]"];
    recipe()
        .args(["validate", "recipes/llama2-7b-lora.yaml"])
        .args(offload)
        .assert()
        .success()
        .stdout(predicate::str::contains("warning[sharding-setting-not-built]").not());
    recipe()
        .args(["plan", "recipes/llama2-7b-lora.yaml"])
        .args(offload)
        .env("WORLD_SIZE", "8")
        .env("LOCAL_WORLD_SIZE", "8")
        .assert()
        .success()
        .stdout(predicate::str::contains("offload: every rank's chunks (trainable and frozen)"))
        .stdout(predicate::str::contains("in host memory per rank (offload), besides"));
    // What is still not built: a warning at validate, a line in the plan.
    let not_built = ["--set", "fsdp_config={mixed_precision_policy: bf16}"];
    recipe()
        .args(["validate", "recipes/llama2-7b-lora.yaml"])
        .args(not_built)
        .assert()
        .success()
        .stdout(predicate::str::contains("warning[sharding-setting-not-built]"));
    recipe()
        .args(["plan", "recipes/llama2-7b-lora.yaml"])
        .args(not_built)
        .env("WORLD_SIZE", "8")
        .env("LOCAL_WORLD_SIZE", "8")
        .assert()
        .success()
        .stdout(predicate::str::contains("is not built; recipe run refuses it"));
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let committed = std::fs::read_to_string("schema/recipe.schema.json").unwrap();
    recipe().arg("schema").assert().success().stdout(committed);
}

#[test]
fn presets_are_listed_with_their_values() {
    recipe()
        .arg("presets")
        .assert()
        .success()
        .stdout(predicate::str::contains("qlora-13b-24gb:"))
        .stdout(predicate::str::contains("load_in_4bit: true"));
    let list = json_of(recipe().args(["presets", "--format", "json"]));
    assert_eq!(list[0]["name"], "lora");
    assert_eq!(list[0]["values"]["lora_alpha"], 32);
}

#[test]
fn plan_takes_the_world_from_torchrun_variables_and_checks_gpu_memory() {
    let plan = json_of(
        recipe()
            .args(["plan", "--json", "recipes/llama2-7b-lora.yaml", "--gpu-memory", "24GiB"])
            .env("WORLD_SIZE", "16")
            .env("LOCAL_WORLD_SIZE", "8"),
    );
    assert_eq!(plan["layout"]["world_size"], 16);
    assert_eq!(plan["layout"]["nodes"], 2);
    assert_eq!(plan["layout"]["strategy"], "ddp");
    assert_eq!(plan["memory"]["gpu_memory"], 24u64 << 30);
    assert!(plan["memory"]["fits"].is_boolean());
    recipe().args(["plan", "recipes/llama2-7b-lora.yaml", "--gpu-memory", "lots"]).assert().code(2);
}

#[test]
fn plan_checks_against_the_visible_gpu_when_no_size_is_given() {
    // A stand-in nvidia-smi reporting two GPUs; CUDA_VISIBLE_DEVICES picks the second.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nvidia-smi");
    std::fs::write(&fake, "#!/bin/sh\nprintf '0, 81559\\n1, 24564\\n'\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let plan = json_of(
        recipe()
            .args(["plan", "--json", "recipes/llama2-13b-qlora.yaml"])
            .env("PATH", path)
            .env("CUDA_VISIBLE_DEVICES", "1"),
    );
    assert_eq!(plan["memory"]["gpu_memory"], 24564u64 << 20);
    assert_eq!(plan["memory"]["fits"], true);
}
