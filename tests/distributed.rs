//! Multi-process training on two CPU ranks (Gloo over loopback) with the real binary and the
//! bundled stories260k: the c10d interface's collectives; 2 ranks × micro 4 equal 1 rank × micro 4
//! × accumulation 2 (LoRA with dropout, full fine-tuning, QLoRA); launched by
//! `--nproc-per-node`, torchrun and SLURM variables alike; a rank killed mid-run stops the others
//! and the run resumes exactly; a rank failing at set-up ends the run with its error, no hang.
#![cfg(feature = "exec")]

mod common;

use recipe::exec::c10d::{Backend, ProcessGroup, ReduceOp, Rendezvous};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small recipe on stories260k in `dir`: `method` is lora, full, qlora, ia3, lora_embed, prompt,
/// prefix or bottleneck.
fn write_recipe(dir: &Path, method: &str, extra: &str) -> PathBuf {
    let adapter = match method {
        "lora" => {
            "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0.1\nlora_target_linear: true\n\
                   learning_rate: 2.0e-3\n"
        }
        "qlora" => {
            "adapter: qlora\nload_in_4bit: true\nbnb_4bit_quant_type: nf4\nbnb_4bit_use_double_quant: true\n\
                    lora_r: 4\nlora_alpha: 8\nlora_target_linear: true\nlearning_rate: 2.0e-3\n"
        }
        "full" => "learning_rate: 2.0e-4\n",
        "ia3" => "adapter: ia3\nlearning_rate: 3.0e-3\n",
        "bottleneck" => "adapter: bottleneck\nadapter_config: houlsby\nlearning_rate: 1.0e-3\n",
        "lora_embed" => {
            "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_modules: [embed_tokens, q_proj, v_proj]\n\
                    learning_rate: 2.0e-3\n"
        }
        // Virtual tokens open each row, so rows are not packed.
        "prompt" => "adapter: prompt_tuning\nnum_virtual_tokens: 4\nlearning_rate: 3.0e-2\n",
        "prefix" => "adapter: prefix_tuning\nnum_virtual_tokens: 4\nlearning_rate: 3.0e-2\n",
        other => panic!("{other}"),
    };
    let packing = !matches!(method, "prompt" | "prefix");
    let text = format!(
        "base_model: {model}\n{adapter}\
         datasets:\n  - path: {data}\n    type: completion\n    ds_type: text\n\
         val_set_size: 0.1\nsequence_len: 128\nsample_packing: {packing}\nmicro_batch_size: 4\n\
         lr_scheduler: cosine\nwarmup_steps: 2\nlogging_steps: 1\nseed: 7\nddp_timeout: 60\n\
         output_dir: {out}\n{extra}",
        model = root().join("models/stories260k").display(),
        data = root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
        out = dir.join("out").display(),
    );
    let path = dir.join("recipe.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn recipe() -> Command {
    common::recipe_command()
}

fn recipe_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_recipe"))
}

fn check_ok(out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("loss")?.as_f64()?)))
        .collect()
}

fn assert_same_losses(a: &[(u64, f64)], b: &[(u64, f64)], relative: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for ((step, x), (_, y)) in a.iter().zip(b) {
        let d = (x - y).abs() / x.abs().max(1e-12);
        assert!(d <= relative, "{what}: step {step}: {x} vs {y} (relative {d:e})");
    }
}

/// The trained weights of an output folder, by name.
fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let file = ["adapter_model.safetensors", "adapter.safetensors", "model.safetensors"]
        .iter()
        .map(|f| dir.join("out").join(f))
        .find(|p| p.is_file())
        .unwrap();
    let mut all = Tensor::read_safetensors(file).unwrap();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn assert_same_weights(a: &Path, b: &Path, tolerance: f64) {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let scale = x.abs().max().double_value(&[]).max(1e-6);
        let d = (x - y).abs().max().double_value(&[]) / scale;
        assert!(d <= tolerance, "{name}: differs by {d:e} of its largest value");
    }
}

#[test]
fn c10d_collectives_give_the_right_results_on_two_ranks() {
    let port = recipe::launch::free_port().unwrap();
    let ranks: Vec<_> = (0..2usize)
        .map(|rank| {
            std::thread::spawn(move || {
                let group = ProcessGroup::join(&Rendezvous {
                    backend: Backend::Gloo,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    rank,
                    world_size: 2,
                    store_server: rank == 0,
                    wait_workers: true,
                    prefix: "test/".into(),
                    timeout: Duration::from_secs(60),
                    gloo_interface: None,
                    cuda_device: 0,
                })
                .unwrap();
                let r = rank as f64;
                let mut sum = Tensor::from_slice(&[1.0 + r, 10.0 * (r + 1.0)]);
                group.all_reduce(&mut sum, ReduceOp::Sum).unwrap();
                let mut max = Tensor::from_slice(&[r, -r]);
                group.all_reduce(&mut max, ReduceOp::Max).unwrap();
                let gathered = group.all_gather(&Tensor::from_slice(&[r, r + 0.5])).unwrap();
                let scattered = group.reduce_scatter(&Tensor::from_slice(&[1.0, 2.0, 3.0 + r, 4.0])).unwrap();
                let mut broadcast = Tensor::from_slice(&[r + 7.0]);
                group.broadcast(&mut broadcast, 1).unwrap();
                group.barrier().unwrap();
                // Integer tensors too (the ranks' plan digests travel as int64).
                let ints = group.all_gather(&Tensor::from_slice(&[rank as i64 * 1_000_000_007])).unwrap();
                let v = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap();
                let values = (
                    v(&sum),
                    v(&max),
                    v(&gathered),
                    v(&scattered),
                    v(&broadcast),
                    Vec::<i64>::try_from(&ints).unwrap(),
                );
                (values, group)
            })
        })
        .collect();
    let (results, mut groups): (Vec<_>, Vec<_>) = ranks.into_iter().map(|h| h.join().unwrap()).unzip();
    // Both ranks live in this process: the groups are torn down only once neither has a collective in
    // flight, the store's client (rank 1) before its server (rank 0), as separate processes end.
    drop(groups.pop());
    drop(groups.pop());
    for (rank, (sum, max, gathered, scattered, broadcast, ints)) in results.into_iter().enumerate() {
        assert_eq!(sum, vec![3.0, 30.0]);
        assert_eq!(max, vec![1.0, 0.0]);
        assert_eq!(gathered, vec![0.0, 0.5, 1.0, 1.5]);
        // [1, 2, 3, 4] + [1, 2, 4, 4] = [2, 4, 7, 8]: rank 0 holds [2, 4], rank 1 [7, 8].
        assert_eq!(scattered, if rank == 0 { vec![2.0, 4.0] } else { vec![7.0, 8.0] });
        assert_eq!(broadcast, vec![8.0]);
        assert_eq!(ints, vec![0, 1_000_000_007]);
    }
}

#[test]
fn a_peer_that_never_comes_is_an_error_within_the_timeout() {
    let port = recipe::launch::free_port().unwrap();
    let start = Instant::now();
    let err = ProcessGroup::join(&Rendezvous {
        backend: Backend::Gloo,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank: 0,
        world_size: 2,
        store_server: true,
        wait_workers: true,
        prefix: "test/".into(),
        timeout: Duration::from_secs(2),
        gloo_interface: None,
        cuda_device: 0,
    })
    .err()
    .expect("no peer: the rendezvous must fail");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    assert!(err.contains("joining the gloo process group"), "{err}");
}

#[test]
fn nccl_without_a_gpu_is_an_error_not_a_crash() {
    if tch::Cuda::is_available() {
        eprintln!("skipped: this machine has a GPU (the check is for CPU machines)");
        return;
    }
    let port = recipe::launch::free_port().unwrap();
    let err = ProcessGroup::join(&Rendezvous {
        backend: Backend::Nccl,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank: 0,
        world_size: 1,
        store_server: true,
        wait_workers: true,
        prefix: "test/".into(),
        timeout: Duration::from_secs(20),
        gloo_interface: None,
        cuda_device: 0,
    })
    .err()
    .expect("NCCL cannot start without a GPU");
    eprintln!("{err}");
    assert!(err.contains("joining the nccl process group"), "{err}");
    assert!(err.contains("GPU") || err.contains("NCCL"), "{err}");
}

/// The reference of the multi-rank runs: one rank × micro 4 × accumulation 2, in a fresh folder.
fn one_rank_with_accumulation_two(method: &str, extra: &str) -> tempfile::TempDir {
    let one = tempfile::tempdir().unwrap();
    let path = write_recipe(one.path(), method, extra);
    check_ok(
        recipe()
            .arg("run")
            .arg(&path)
            .args(["--device", "cpu", "--set", "gradient_accumulation_steps=2"])
            .output()
            .unwrap(),
    );
    one
}

/// One rank × micro 4 × accumulation 2, and two ranks × micro 4 through `--nproc-per-node`.
fn one_and_two_ranks(method: &str, extra: &str) -> (tempfile::TempDir, tempfile::TempDir) {
    let one = one_rank_with_accumulation_two(method, extra);
    let two = tempfile::tempdir().unwrap();
    let path = write_recipe(two.path(), method, extra);
    let stdout =
        check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
    assert!(stdout.contains("layout     Ddp across 2 rank(s) (gloo)"), "{stdout}");
    (one, two)
}

#[test]
fn two_ranks_equal_one_rank_with_accumulation_lora() {
    let (one, two) = one_and_two_ranks("lora", "max_steps: 6\neval_steps: 3\n");
    assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, "lora");
    assert_same_weights(one.path(), two.path(), 1e-5);
}

#[test]
fn two_ranks_equal_one_rank_with_accumulation_full_and_qlora() {
    for method in ["full", "qlora"] {
        let (one, two) = one_and_two_ranks(method, "max_steps: 4\n");
        assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, method);
        // The embedding's B starts at a standard normal, so its updates are large and the two
        // summation orders (accumulation vs reduce-scatter) part by more: measured 1.2e-5 of the
        // largest value of a q_proj lora_B after 4 steps (IA3: within 1e-5).
        assert_same_weights(one.path(), two.path(), if method == "ia3" { 1e-5 } else { 5e-5 });
    }
}

#[test]
fn two_ranks_equal_one_rank_with_accumulation_bottleneck() {
    // Bottleneck adapters (adapters' format, adapter.safetensors): their gradients are all-reduced as
    // any adapter's.
    let (one, two) = one_and_two_ranks("bottleneck", "max_steps: 4\n");
    assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, "bottleneck");
    assert_same_weights(one.path(), two.path(), 1e-5);
}

/// The environment torchrun gives its workers: the torch install the scripts made, if any.
fn torchrun() -> Option<Command> {
    let cache = std::env::var("RECIPE_CACHE").ok()?;
    let site = Path::new(&cache).join("torch-2.11.0");
    site.join("torch/distributed/run.py").is_file().then(|| {
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", &site).env("NO_COLOR", "1").env("RECIPE_LOG", "warn").env("OMP_NUM_THREADS", "1");
        cmd.args(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--no-python"]);
        cmd
    })
}

#[test]
fn torchrun_and_slurm_launches_give_the_same_losses() {
    let extra = "max_steps: 4\n";
    let reference = tempfile::tempdir().unwrap();
    let path = write_recipe(reference.path(), "lora", extra);
    check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
    let want = step_losses(reference.path());

    // SLURM: two tasks of one step, the master from the node list and MASTER_PORT.
    let slurm = tempfile::tempdir().unwrap();
    let path = write_recipe(slurm.path(), "lora", extra);
    let port = recipe::launch::free_port().unwrap().to_string();
    let tasks: Vec<_> = (0..2)
        .map(|rank| {
            recipe()
                .arg("run")
                .arg(&path)
                .args(["--device", "cpu", "--no-progress"])
                .env("SLURM_NTASKS", "2")
                .env("SLURM_PROCID", rank.to_string())
                .env("SLURM_LOCALID", rank.to_string())
                .env("SLURM_NNODES", "1")
                .env("SLURM_STEP_ID", "0")
                .env("SLURM_JOB_ID", "4242")
                .env("SLURM_JOB_NODELIST", "localhost")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for t in tasks {
        check_ok(t.wait_with_output().unwrap());
    }
    assert_same_losses(&want, &step_losses(slurm.path()), 1e-6, "SLURM");

    let Some(mut torchrun) = torchrun() else {
        eprintln!("skipped torchrun: no torch install in RECIPE_CACHE (scripts/env.sh makes one)");
        return;
    };
    let launched = tempfile::tempdir().unwrap();
    let path = write_recipe(launched.path(), "lora", extra);
    let out = torchrun.arg(recipe_binary()).arg("run").arg(&path).args(["--device", "cpu", "--no-progress"]).output();
    check_ok(out.unwrap());
    assert_same_losses(&want, &step_losses(launched.path()), 1e-6, "torchrun");
}

/// The ranks `recipe run --nproc-per-node` spawned: the children of `pid` (Linux /proc).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `recipe run --nproc-per-node 2` in the background, once its checkpoint-2 exists.
fn launch_until_first_checkpoint(dir: &Path, path: &Path) -> std::process::Child {
    let launcher = recipe()
        .arg("run")
        .arg(path)
        .args(["--device", "cpu", "--no-progress", "--nproc-per-node", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = dir.join("out/checkpoint-2/trainer_state.json");
    let start = Instant::now();
    while !first.is_file() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    launcher
}

/// Two ranks started by hand with torchrun's variables; rank 1 gets `rank1_args` too.
fn two_ranks_by_hand(path: &Path, rank1_args: &[&str]) -> Vec<std::process::Output> {
    let port = recipe::launch::free_port().unwrap().to_string();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let mut cmd = recipe();
            cmd.arg("run").arg(path).args(["--device", "cpu", "--no-progress"]);
            if rank == 1 {
                cmd.args(rank1_args);
            }
            cmd.env("WORLD_SIZE", "2")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    ranks.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

/// Two ranks run `extra` uninterrupted; then again with rank 1 killed by SIGKILL after the first
/// checkpoint (the other rank stops within ddp_timeout), and resumed on two ranks: the losses
/// repeat. Returns the uninterrupted run's folder and its losses, and the resumed run's folder.
fn killed_and_resumed(
    method: &str,
    extra: &str,
    steps: usize,
) -> (tempfile::TempDir, Vec<(u64, f64)>, tempfile::TempDir) {
    let reference = tempfile::tempdir().unwrap();
    let path = write_recipe(reference.path(), method, extra);
    check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
    let want = step_losses(reference.path());
    assert_eq!(want.len(), steps);

    let b = tempfile::tempdir().unwrap();
    let path = write_recipe(b.path(), method, extra);
    let launcher = launch_until_first_checkpoint(b.path(), &path);
    // Rank 1 is the second child spawned (ranks are spawned in order).
    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    unsafe {
        libc::kill(ranks[1] as i32, libc::SIGKILL);
    }
    let killed = Instant::now();
    let out = launcher.wait_with_output().unwrap();
    assert!(killed.elapsed() < Duration::from_secs(60), "the other rank did not stop within ddp_timeout");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rank 1 was killed by signal 9 (SIGKILL)"), "{stderr}");
    let done = step_losses(b.path()).len();
    assert!(done < steps, "the run was not interrupted ({done} steps)");

    let resumed = ["--device", "cpu", "--nproc-per-node", "2", "--set", "resume_from_checkpoint=true"];
    let stdout = check_ok(recipe().arg("run").arg(&path).args(resumed).output().unwrap());
    assert!(stdout.contains("resumed    from"), "{stdout}");
    assert_same_losses(&want, &step_losses(b.path()), 1e-6, "resumed on two ranks");
    (reference, want, b)
}

#[test]
fn a_killed_rank_stops_the_run_and_two_ranks_resume_exactly() {
    killed_and_resumed("lora", "max_steps: 12\nsave_steps: 2\n", 12);
}

#[test]
fn a_rank_failing_at_set_up_ends_the_run_with_its_error() {
    // Rank 1 sees another dataset path (a missing file on that node): no hang, a clear error.
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "lora", "max_steps: 4\n");
    let start = Instant::now();
    let missing = format!("datasets.0.path={}", dir.path().join("missing.txt").display());
    let outs = two_ranks_by_hand(&path, &["--set", &missing]);
    assert!(start.elapsed() < Duration::from_secs(50), "took {:?}", start.elapsed());
    let stderr = |i: usize| String::from_utf8_lossy(&outs[i].stderr).into_owned();
    assert!(!outs[0].status.success() && !outs[1].status.success());
    assert!(stderr(1).contains("[rank 1]") && stderr(1).contains("missing.txt"), "{}", stderr(1));
    assert!(stderr(0).contains("rank 1 failed during set-up"), "{}", stderr(0));
}

#[test]
fn launcher_variables_without_a_master_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "lora", "max_steps: 2\n");
    let out = recipe()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu"])
        .env("WORLD_SIZE", "4")
        .env("RANK", "1")
        .env("LOCAL_RANK", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WORLD_SIZE=4 but MASTER_ADDR, MASTER_PORT are not set"), "{stderr}");
    assert!(!dir.path().join("out").exists(), "nothing is written");
}

#[test]
fn ranks_that_resolved_different_plans_refuse_to_train_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "lora", "max_steps: 4\n");
    let outs = two_ranks_by_hand(&path, &["--set", "learning_rate=1.0e-3"]);
    for (rank, out) in outs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "rank {rank} trained");
        assert!(stderr.contains("rank 1 resolved a different plan or training data than rank 0"), "{stderr}");
    }
    assert!(!dir.path().join("out/metrics.jsonl").exists(), "nothing was trained");
}

#[test]
fn ctrl_c_stops_every_rank_at_the_same_step_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "lora", "max_steps: 400\nsave_steps: 2\n");
    let launcher = launch_until_first_checkpoint(dir.path(), &path);
    unsafe {
        libc::kill(launcher.id() as i32, libc::SIGINT);
    }
    let out = launcher.wait_with_output().unwrap();
    let stdout = check_ok(out);
    let stopped: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stopped    at step ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(stopped < 400, "{stdout}");
    let saved = dir.path().join(format!("out/checkpoint-{stopped}/trainer_state.json"));
    assert!(saved.is_file(), "no checkpoint at the step it stopped ({stopped})");
    assert_eq!(step_losses(dir.path()).len() as u64, stopped);
}

/// A DeepSpeed config's ZeRO stage 2 runs on the sharded executor exactly as `fsdp:
/// [shard_grad_op]` (Axolotl's zero2.json without its CPU offload); ZeRO-1 (optimizer states
/// alone sharded, gradients all-reduced) repeats the one-rank run with accumulation 2.
#[test]
fn deepspeed_zero2_trains_as_shard_grad_op_and_zero1_as_the_one_rank_run() {
    let zero2 = "{\"zero_optimization\": {\"stage\": 2, \"overlap_comm\": true, \"contiguous_gradients\": true},\n\
                 \"bf16\": {\"enabled\": \"auto\"}, \"gradient_accumulation_steps\": \"auto\",\n\
                 \"gradient_clipping\": \"auto\", \"train_batch_size\": \"auto\",\n\
                 \"train_micro_batch_size_per_gpu\": \"auto\", \"wall_clock_breakdown\": false}\n";
    let run = |extra: &str, json: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ds.json"), json).unwrap();
        let path = write_recipe(dir.path(), "lora", &format!("max_steps: 4\n{extra}"));
        let out = recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap();
        (dir, out)
    };
    let (fsdp, out) = run("fsdp: [shard_grad_op]\n", zero2);
    check_ok(out);
    let (deepspeed, out) = run("deepspeed: ds.json\n", zero2);
    assert!(check_ok(out).contains("layout     ShardGradOp across 2 rank(s) (gloo)"));
    assert_same_losses(&step_losses(fsdp.path()), &step_losses(deepspeed.path()), 0.0, "zero2 vs shard_grad_op");
    assert_same_weights(fsdp.path(), deepspeed.path(), 0.0);

    let one = one_rank_with_accumulation_two("lora", "max_steps: 4\n");
    let (zero1, out) = run("deepspeed: ds.json\n", &zero2.replace("\"stage\": 2", "\"stage\": 1"));
    let stdout = check_ok(out);
    let layout = layout_line(&stdout);
    assert!(layout.starts_with("layout     ShardOptimizer across 2 rank(s) (gloo)"), "{stdout}");
    assert!(layout.contains("reduce-scattered 0 B") && !layout.contains("all-reduced 0 B"), "{layout}");
    assert_same_losses(&step_losses(one.path()), &step_losses(zero1.path()), 1e-5, "zero1");
    assert_same_weights(one.path(), zero1.path(), 1e-5);
}

/// The run's `layout` line (rank 0's report).
fn layout_line(stdout: &str) -> &str {
    stdout.lines().find(|l| l.starts_with("layout")).unwrap_or_default()
}

/// Two ranks under `fsdp: [strategy]` in a fresh folder; returns it and the report.
fn two_sharded_ranks(method: &str, extra: &str, strategy: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), method, &format!("{extra}fsdp: [{strategy}, auto_wrap]\n"));
    let stdout =
        check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
    (dir, stdout)
}

#[test]
fn sharded_strategies_repeat_the_one_rank_run() {
    for (method, strategies, extra) in [
        ("full", &["full_shard", "shard_grad_op"][..], "max_steps: 4\neval_steps: 2\n"),
        ("lora", &["full_shard"][..], "max_steps: 4\n"),
        // Each rank loads only its chunks of the base.
        ("full", &["full_shard"][..], "max_steps: 4\nfsdp_config:\n  cpu_ram_efficient_loading: true\n"),
        ("qlora", &["full_shard"][..], "max_steps: 4\n"),
    ] {
        let one = one_rank_with_accumulation_two(method, extra);
        for strategy in strategies {
            let (two, stdout) = two_sharded_ranks(method, extra, strategy);
            let layout = layout_line(&stdout);
            let name = if *strategy == "full_shard" { "FullShard" } else { "ShardGradOp" };
            assert!(layout.starts_with(&format!("layout     {name} across 2 rank(s) (gloo); per step")), "{stdout}");
            // What the ranks moved is what the plan says they move.
            let (ran, planned) = layout.split_once("; per step ").unwrap().1.split_once(" (plan: ").unwrap();
            let ran = ran.replace("all-gathered ", "").replace("reduce-scattered ", "").replace("all-reduced ", "");
            let (ran, planned): (Vec<&str>, Vec<&str>) =
                (ran.split(", ").collect(), planned.trim_end_matches(')').split(", ").collect());
            // Frozen weights are gathered in the kind they are stored in, which the plan takes
            // from the GPU (16 bits) and a CPU run keeps in 32; trainable ones are fp32 on both.
            let compared = if method == "full" { 0..3 } else { 1..3 };
            assert_eq!(ran[compared.clone()], planned[compared], "{layout}");
            assert_same_losses(
                &step_losses(one.path()),
                &step_losses(two.path()),
                1e-5,
                &format!("{method} {strategy}"),
            );
            assert_same_weights(one.path(), two.path(), 1e-5);
        }
    }
}

/// `unfrozen_parameters` under sharding: the selected tensors train whole (each rank its chunks of
/// them), the rest stay frozen; the same losses and weights as one rank with accumulation 2.
#[test]
fn sharded_unfrozen_parameters_repeat_the_one_rank_run() {
    let extra = "max_steps: 4\nunfrozen_parameters:\n  - ^model.layers.[0-2].mlp.*\n  - model.norm\n";
    let one = one_rank_with_accumulation_two("full", extra);
    // Each rank loading only its chunks of the base, too.
    let chunks = format!("{extra}fsdp_config:\n  cpu_ram_efficient_loading: true\n");
    for (strategy, extra) in [("full_shard", extra), ("shard_grad_op", extra), ("full_shard", chunks.as_str())] {
        let (two, stdout) = two_sharded_ranks("full", extra, strategy);
        assert!(layout_line(&stdout).contains("across 2 rank(s)"), "{stdout}");
        assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, strategy);
        assert_same_weights(one.path(), two.path(), 1e-5);
        // What was not selected is the base, bit for bit.
        let base: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(root().join("models/stories260k/model.safetensors"))
                .unwrap()
                .into_iter()
                .collect();
        for (name, trained) in weights(two.path()) {
            let selected = (name.starts_with("model.layers.0.mlp")
                || name.starts_with("model.layers.1.mlp")
                || name.starts_with("model.layers.2.mlp"))
                || name.starts_with("model.norm");
            let Some(loaded) = base.get(&name) else { continue };
            let loaded = loaded.to_kind(trained.kind());
            let moved = (&trained - &loaded).abs().max().double_value(&[]);
            assert_eq!(moved > 0.0, selected, "{name}: moved by {moved:e}");
        }
    }
    // A row range is not built under sharding: refused by name.
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(
        dir.path(),
        "full",
        "unfrozen_parameters:\n  - ^model.embed_tokens.weight$[:100]\nfsdp: [full_shard, auto_wrap]\n",
    );
    let out = recipe().arg("validate").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("unsupported-unfrozen-rows-sharded"), "{text}");
}

#[test]
fn sharded_ia3_and_embedding_lora_repeat_the_one_rank_run() {
    // IA3 vectors shard with their decoder layer, the embedding's LoRA pair with the root unit.
    for method in ["ia3", "lora_embed"] {
        let extra = "max_steps: 4\n";
        let one = one_rank_with_accumulation_two(method, extra);
        let (two, stdout) = two_sharded_ranks(method, extra, "full_shard");
        assert!(layout_line(&stdout).starts_with("layout     FullShard across 2 rank(s) (gloo)"), "{stdout}");
        assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, method);
        // The embedding's B starts at a standard normal, so its updates are large and the two
        // summation orders (accumulation vs reduce-scatter) part by more: measured 1.2e-5 of the
        // largest value of a q_proj lora_B after 4 steps (IA3: within 1e-5).
        assert_same_weights(one.path(), two.path(), if method == "ia3" { 1e-5 } else { 5e-5 });
    }
}

#[test]
fn hybrid_shard_over_two_nodes_of_one_rank_repeats_the_one_rank_run() {
    let one = one_rank_with_accumulation_two("full", "max_steps: 4\n");
    let two = tempfile::tempdir().unwrap();
    let path = write_recipe(two.path(), "full", "max_steps: 4\nfsdp: [hybrid_shard, auto_wrap]\n");
    let port = recipe::launch::free_port().unwrap().to_string();
    let nodes: Vec<_> = (0..2)
        .map(|node| {
            recipe()
                .arg("run")
                .arg(&path)
                .args(["--device", "cpu", "--no-progress", "--nproc-per-node", "1", "--nnodes", "2"])
                .args(["--node-rank", &node.to_string(), "--master-port", &port])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = nodes.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let stdout = outs.into_iter().map(check_ok).collect::<Vec<_>>().concat();
    // Shard groups of one rank (one per node), gradients all-reduced across the nodes.
    assert!(layout_line(&stdout).starts_with("layout     HybridShard across 2 rank(s) (gloo); per step"), "{stdout}");
    assert!(!layout_line(&stdout).contains("all-reduced 0 B"), "{stdout}");
    assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, "hybrid_shard");
    assert_same_weights(one.path(), two.path(), 1e-5);
}

#[test]
fn a_killed_sharded_run_resumes_exactly_on_two_ranks_and_on_one() {
    let extra = "max_steps: 8\nsave_steps: 2\nfsdp: [full_shard, auto_wrap]\n";
    let (reference, want, b) = killed_and_resumed("full", extra, 8);
    assert_same_weights(reference.path(), b.path(), 1e-6);

    // The two-rank checkpoint is whole: one rank with accumulation 2 goes on from it alike.
    let c = tempfile::tempdir().unwrap();
    let path = write_recipe(c.path(), "full", "max_steps: 8\nsave_steps: 2\n");
    let from = reference.path().join("out/checkpoint-4");
    let out = recipe()
        .arg("run")
        .arg(&path)
        .args(["--device", "cpu", "--set", "gradient_accumulation_steps=2", "--set"])
        .arg(format!("resume_from_checkpoint={}", from.display()))
        .output()
        .unwrap();
    let stdout = check_ok(out);
    assert!(stdout.contains("resumed    from"), "{stdout}");
    let after: Vec<(u64, f64)> = step_losses(c.path()).into_iter().filter(|(s, _)| *s > 4).collect();
    let want_after: Vec<(u64, f64)> = want.into_iter().filter(|(s, _)| *s > 4).collect();
    assert_same_losses(&want_after, &after, 1e-5, "resumed on one rank");
    assert_same_weights(reference.path(), c.path(), 1e-5);
}

/// "training peak 825.81 MiB in use (...); the plan's CPU estimate 868.28 MiB" → bytes.
fn memory_figures(stdout: &str) -> (f64, f64) {
    let line = stdout.lines().find(|l| l.starts_with("memory     training peak")).expect("a memory line");
    let size = |s: &str| -> f64 {
        let mut it = s.split_whitespace();
        let n: f64 = it.next().unwrap().parse().unwrap();
        n * match it.next().unwrap() {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            u => panic!("{u} in {line}"),
        }
    };
    let peak = line.trim_start_matches("memory     training peak ");
    let estimate = line.split("the plan's CPU estimate ").nth(1).unwrap();
    (size(peak), size(estimate))
}

#[test]
fn full_shard_holds_at_most_six_tenths_of_data_parallel_memory_per_rank_as_the_plan_says() {
    // A random ~100M-parameter Llama, fully fine-tuned on two ranks.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama-100m");
    common::random_llama(
        &model,
        &serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 768,
            "intermediate_size": 2048, "num_hidden_layers": 14, "num_attention_heads": 12, "num_key_value_heads": 12,
            "vocab_size": 512, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"
        }),
    );
    let mut figures = Vec::new();
    for fsdp in ["", "fsdp: [full_shard, auto_wrap]\n"] {
        let path = dir.path().join("recipe.yaml");
        std::fs::write(
            &path,
            format!(
                "base_model: {}\ndatasets:\n  - path: {}\n    type: completion\n    ds_type: text\n\
                 val_set_size: 0\nsequence_len: 128\nsample_packing: true\nmicro_batch_size: 1\nmax_steps: 2\n\
                 learning_rate: 2.0e-5\nddp_timeout: 300\noutput_dir: {}\n{fsdp}",
                model.display(),
                root().join("data/shakespeare/tinyshakespeare-excerpt.txt").display(),
                dir.path().join(if fsdp.is_empty() { "ddp" } else { "fsdp" }).display()
            ),
        )
        .unwrap();
        let stdout = check_ok(
            recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap(),
        );
        figures.push(memory_figures(&stdout));
    }
    let ((ddp, _), (sharded, estimate)) = (figures[0], figures[1]);
    eprintln!("per-rank peak: ddp {ddp:.0} B, full_shard {sharded:.0} B ({:.3}x), plan {estimate:.0} B", sharded / ddp);
    assert!(sharded <= 0.6 * ddp, "full_shard {sharded} vs ddp {ddp}");
    assert!((sharded / estimate - 1.0).abs() <= 0.15, "full_shard {sharded} vs the plan's {estimate}");
}

#[test]
fn sharded_settings_recipe_run_does_not_build_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, says) in [
        (
            "fsdp_config:\n  transformer_layer_cls_to_wrap: MistralDecoderLayer\n",
            "transformer_layer_cls_to_wrap is `MistralDecoderLayer`, but this model's decoder layer is `LlamaDecoderLayer`",
        ),
        (
            "fsdp_config:\n  state_dict_type: LOCAL_STATE_DICT\n",
            "fsdp_config.state_dict_type: LOCAL_STATE_DICT checkpoints",
        ),
        ("fsdp_config:\n  mixed_precision_policy: bf16\n", "fsdp_config.mixed_precision_policy: FSDP's own"),
        ("fsdp: [offload]\n", "fsdp: offload without sharding"),
        (
            "fsdp_config:\n  sync_module_states: false\n",
            "fsdp_config.sync_module_states: ranks starting from their own",
        ),
        (
            "fsdp: [shard_grad_op]\nfsdp_config:\n  cpu_ram_efficient_loading: true\n",
            "cpu_ram_efficient_loading: true with ShardGradOp",
        ),
    ] {
        let path = write_recipe(dir.path(), "full", &format!("max_steps: 1\n{extra}"));
        let out = recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{extra}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Offload keeps chunks, gradient chunks and optimizer states in host memory and copies each
/// unit's chunks to the compute device for its collectives; on a CPU run the two are one memory,
/// so an offloaded run must compute exactly what the same run without offload does.
#[test]
fn offloaded_sharded_runs_repeat_the_runs_without_offload_exactly() {
    // fsdp's offload under full sharding, a full fine-tune: every chunk offloaded.
    let extra = "max_steps: 3\n";
    let (kept, _) = two_sharded_ranks("full", extra, "full_shard");
    let (offloaded, stdout) = two_sharded_ranks("full", extra, "full_shard, offload");
    assert!(stdout.contains("offload    trainable and frozen chunks"), "{stdout}");
    assert!(stdout.contains("of state on this rank (its chunks), in host memory (offload)"), "{stdout}");
    assert_same_losses(&step_losses(kept.path()), &step_losses(offloaded.path()), 0.0, "full_shard + offload");
    assert_same_weights(kept.path(), offloaded.path(), 0.0);

    // DeepSpeed ZeRO-2 with offload_optimizer, LoRA: the trainable chunks and the optimizer on the
    // host, as shard_grad_op without offload.
    let zero2 = "{\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": \"cpu\", \"pin_memory\": true}},\n\
                 \"gradient_accumulation_steps\": \"auto\", \"train_micro_batch_size_per_gpu\": \"auto\"}\n";
    let (kept, _) = two_sharded_ranks("lora", extra, "shard_grad_op");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ds.json"), zero2).unwrap();
    let path = write_recipe(dir.path(), "lora", &format!("{extra}deepspeed: ds.json\n"));
    let stdout =
        check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
    assert!(stdout.contains("offload    trainable chunks"), "{stdout}");
    assert_same_losses(&step_losses(kept.path()), &step_losses(dir.path()), 0.0, "zero2 + offload_optimizer");
    assert_same_weights(kept.path(), dir.path(), 0.0);
}

#[test]
fn the_axolotl_fsdp2_demo_recipe_runs_as_is_on_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let stdout = check_ok(
        recipe()
            .arg("run")
            .arg(root().join("recipes/demo/stories260k-fsdp2.yaml"))
            .args(["--device", "cpu", "--nproc-per-node", "2", "--set", "max_steps=4", "--set", "eval_steps=2"])
            .arg("--set")
            .arg(format!("output_dir={}", out.display()))
            .output()
            .unwrap(),
    );
    assert!(layout_line(&stdout).starts_with("layout     FullShard across 2 rank(s) (gloo)"), "{stdout}");
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn sharded_state_dict_checkpoints_resume_on_two_ranks_and_on_one() {
    let extra = "max_steps: 4\nsave_steps: 2\nfsdp: [full_shard, auto_wrap]\nfsdp_config:\n  state_dict_type: SHARDED_STATE_DICT\n";
    let first = tempfile::tempdir().unwrap();
    let path = write_recipe(first.path(), "full", extra);
    check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
    let want: Vec<(u64, f64)> = step_losses(first.path()).into_iter().filter(|(s, _)| *s > 2).collect();
    let checkpoint = first.path().join("out/checkpoint-2");
    // Each rank's chunks and an index; no whole weights; the final outputs are whole.
    for f in ["shards/index.json", "shards/rank-00000-of-00002.safetensors", "shards/rank-00001-of-00002.safetensors"] {
        assert!(checkpoint.join(f).is_file(), "{f}");
    }
    assert!(!checkpoint.join("model.safetensors").exists());
    assert!(first.path().join("out/model.safetensors").is_file());
    for (ranks, accumulation) in [("2", "1"), ("1", "2")] {
        let again = tempfile::tempdir().unwrap();
        let path = write_recipe(again.path(), "full", extra);
        let stdout = check_ok(
            recipe()
                .arg("run")
                .arg(&path)
                .args(["--device", "cpu", "--nproc-per-node", ranks, "--set"])
                .arg(format!("gradient_accumulation_steps={accumulation}"))
                .arg("--set")
                .arg(format!("resume_from_checkpoint={}", checkpoint.display()))
                .output()
                .unwrap(),
        );
        assert!(stdout.contains("resumed    from"), "{stdout}");
        assert_same_losses(&want, &step_losses(again.path()), 1e-5, &format!("resumed on {ranks} rank(s)"));
        assert_same_weights(first.path(), again.path(), 1e-5);
    }
}

/// Sharded 8-bit AdamW: each rank's chunk of a tensor with 8-bit states is whole 256-element
/// blocks of it, so every block's absmax and codes are those of the whole tensor. Against data
/// parallelism on the same two ranks (the same summed gradients; no clipping, whose norm is summed
/// in another order) shard_grad_op repeats the run bit for bit, its checkpointed 8-bit state too;
/// full_shard repeats the one-rank run, and resumes from its (whole) checkpoint on two ranks.
#[test]
fn sharded_eight_bit_adamw_repeats_data_parallelism_bit_for_bit() {
    let extra = "max_steps: 4\nsave_steps: 2\nmax_grad_norm: 0.0\noptimizer: adamw_bnb_8bit\n";
    let ddp = tempfile::tempdir().unwrap();
    let path = write_recipe(ddp.path(), "full", extra);
    check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
    let (sharded, stdout) = two_sharded_ranks("full", extra, "shard_grad_op");
    assert!(stdout.contains("optimizer  adamw_bnb_8bit: "), "{stdout}");
    assert_same_losses(&step_losses(ddp.path()), &step_losses(sharded.path()), 0.0, "8-bit shard_grad_op");
    assert_same_weights(ddp.path(), sharded.path(), 0.0);
    let state = |dir: &Path| {
        let mut all = Tensor::read_safetensors(dir.join("out/checkpoint-2/optimizer.safetensors")).unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let (a, b) = (state(ddp.path()), state(sharded.path()));
    assert_eq!(a.len(), b.len());
    assert!(a.iter().any(|(n, _)| n.ends_with(".q8")), "no 8-bit state in the checkpoint");
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        assert!(x.equal(y), "{name} differs");
    }

    let extra = "max_steps: 4\nsave_steps: 2\noptimizer: paged_adamw_8bit\n";
    let one = one_rank_with_accumulation_two("full", extra);
    let (two, _) = two_sharded_ranks("full", extra, "full_shard");
    assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, "8-bit full_shard");
    assert_same_weights(one.path(), two.path(), 1e-5);
    let want: Vec<(u64, f64)> = step_losses(two.path()).into_iter().filter(|(s, _)| *s > 2).collect();
    let again = tempfile::tempdir().unwrap();
    let path = write_recipe(again.path(), "full", &format!("{extra}fsdp: [full_shard, auto_wrap]\n"));
    let stdout = check_ok(
        recipe()
            .arg("run")
            .arg(&path)
            .args(["--device", "cpu", "--nproc-per-node", "2", "--set"])
            .arg(format!("resume_from_checkpoint={}", two.path().join("out/checkpoint-2").display()))
            .output()
            .unwrap(),
    );
    assert!(stdout.contains("resumed    from"), "{stdout}");
    assert_same_losses(&want, &step_losses(again.path()), 1e-6, "8-bit full_shard resumed");
    assert_same_weights(two.path(), again.path(), 1e-5);
}

/// SGD and Lion update elementwise, so sharded training updates chunks: shard_grad_op repeats data
/// parallelism bit for bit (the same reductions; no clipping, whose norm sums the chunks in another
/// order), its checkpointed state too, and resumes from it on two ranks to the same losses.
#[test]
fn sharded_sgd_and_lion_repeat_data_parallelism_bit_for_bit() {
    for optimizer in ["sgd", "lion_32bit"] {
        let extra = format!("max_steps: 4\nsave_steps: 2\nmax_grad_norm: 0.0\noptimizer: {optimizer}\n");
        let ddp = tempfile::tempdir().unwrap();
        let path = write_recipe(ddp.path(), "full", &extra);
        check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
        let (sharded, stdout) = two_sharded_ranks("full", &extra, "shard_grad_op");
        assert!(stdout.contains(&format!("optimizer  {optimizer}: ")), "{stdout}");
        assert_same_losses(&step_losses(ddp.path()), &step_losses(sharded.path()), 0.0, optimizer);
        assert_same_weights(ddp.path(), sharded.path(), 0.0);
        let state = |dir: &Path| {
            let mut all = Tensor::read_safetensors(dir.join("out/checkpoint-2/optimizer.safetensors")).unwrap();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        };
        let (a, b) = (state(ddp.path()), state(sharded.path()));
        assert_eq!(a.len(), b.len(), "{optimizer}");
        for ((name, x), (other, y)) in a.iter().zip(&b) {
            assert_eq!(name, other);
            assert!(x.equal(y), "{optimizer}: {name} differs");
        }
        let want: Vec<(u64, f64)> = step_losses(sharded.path()).into_iter().filter(|(s, _)| *s > 2).collect();
        let again = tempfile::tempdir().unwrap();
        let path = write_recipe(again.path(), "full", &format!("{extra}fsdp: [shard_grad_op, auto_wrap]\n"));
        let stdout = check_ok(
            recipe()
                .arg("run")
                .arg(&path)
                .args(["--device", "cpu", "--nproc-per-node", "2", "--set"])
                .arg(format!("resume_from_checkpoint={}", sharded.path().join("out/checkpoint-2").display()))
                .output()
                .unwrap(),
        );
        assert!(stdout.contains("resumed    from"), "{stdout}");
        assert_same_losses(&want, &step_losses(again.path()), 0.0, &format!("{optimizer} resumed"));
        assert_same_weights(sharded.path(), again.path(), 0.0);
    }
}

/// SHARDED_STATE_DICT checkpoints of 8-bit AdamW: each rank writes its chunks' codes and block
/// scales; a resume assembles them, on two ranks and on one.
#[test]
fn sharded_eight_bit_checkpoints_resume_on_two_ranks_and_on_one() {
    let extra = "max_steps: 4\nsave_steps: 2\noptimizer: adamw_8bit\nfsdp: [full_shard, auto_wrap]\n\
                 fsdp_config:\n  state_dict_type: SHARDED_STATE_DICT\n";
    let first = tempfile::tempdir().unwrap();
    let path = write_recipe(first.path(), "full", extra);
    check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap());
    let checkpoint = first.path().join("out/checkpoint-2");
    let shard = Tensor::read_safetensors(checkpoint.join("shards/rank-00001-of-00002.safetensors")).unwrap();
    assert!(shard.iter().any(|(n, _)| n.ends_with(".exp_avg.q8")), "no 8-bit codes in the shard");
    let want: Vec<(u64, f64)> = step_losses(first.path()).into_iter().filter(|(s, _)| *s > 2).collect();
    for (ranks, accumulation) in [("2", "1"), ("1", "2")] {
        let again = tempfile::tempdir().unwrap();
        let path = write_recipe(again.path(), "full", extra);
        let stdout = check_ok(
            recipe()
                .arg("run")
                .arg(&path)
                .args(["--device", "cpu", "--nproc-per-node", ranks, "--set"])
                .arg(format!("gradient_accumulation_steps={accumulation}"))
                .arg("--set")
                .arg(format!("resume_from_checkpoint={}", checkpoint.display()))
                .output()
                .unwrap(),
        );
        assert!(stdout.contains("resumed    from"), "{stdout}");
        assert_same_losses(&want, &step_losses(again.path()), 1e-5, &format!("8-bit resumed on {ranks} rank(s)"));
        assert_same_weights(first.path(), again.path(), 1e-5);
    }
}

/// `do_causal_lm_eval` under full sharding: every rank generates alike (each pass gathers from
/// all ranks), rank 0 scores and logs; the scores are the one-rank run's.
#[test]
fn sharded_causal_lm_eval_scores_as_the_one_rank_run() {
    let run = |ranks: &str, extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipe.yaml");
        let text = format!(
            "base_model: {}\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n\
             datasets:\n  - path: {}\n    type: alpaca\nsequence_len: 256\nmicro_batch_size: 2\n\
             max_steps: 2\nlearning_rate: 2.0e-4\nseed: 5\nval_set_size: 0.34\neval_steps: 2\nddp_timeout: 60\n\
             do_causal_lm_eval: true\neval_causal_lm_metrics: [chrf]\neval_max_new_tokens: 6\noutput_dir: {}\n{extra}",
            root().join("models/stories260k").display(),
            root().join("tests/fixtures/pipeline/instructions.jsonl").display(),
            dir.path().join("out").display()
        );
        std::fs::write(&path, text).unwrap();
        check_ok(recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", ranks]).output().unwrap());
        let records: Vec<Value> = std::fs::read_to_string(dir.path().join("out/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        records
            .into_iter()
            .filter_map(|r| Some((r["step"].as_u64()?, r.get("eval_chrf")?.as_f64()?)))
            .collect::<Vec<_>>()
    };
    let one = run("1", "gradient_accumulation_steps: 2\n");
    let two = run("2", "fsdp: [full_shard, auto_wrap]\n");
    assert_eq!(one.len(), 2, "steps 0 and 2: {one:?}");
    assert_eq!(one, two);
}

/// Prompt and prefix tuning's tensors shard with the root unit (they are read from the
/// embeddings on, while it is gathered), so sharded runs repeat the one-rank run.
#[test]
fn sharded_prompt_and_prefix_tuning_repeat_the_one_rank_run() {
    for (method, strategy, extra) in [
        ("prompt", "full_shard", "max_steps: 3\n"),
        // Full sharding recomputes layers, which prefix tuning refuses: the layers stay gathered.
        ("prefix", "full_shard", "max_steps: 3\nfsdp_config:\n  reshard_after_forward: false\n"),
    ] {
        let one = one_rank_with_accumulation_two(method, extra);
        let (two, stdout) = two_sharded_ranks(method, extra, strategy);
        assert!(layout_line(&stdout).starts_with("layout     FullShard across 2 rank(s)"), "{stdout}");
        assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, method);
        assert_same_weights(one.path(), two.path(), 1e-5);
    }
    // With the layers released after their forward pass, prefix tuning is refused by name.
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "prefix", "max_steps: 1\nfsdp: [full_shard, auto_wrap]\n");
    let out = recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("adapter: prefix_tuning under FullShard"), "{stderr}");
}

/// EWC under sharding: F and θ0 are made while the model is whole, each rank penalises its chunks
/// and adds the penalty's gradient to its gradient chunks once they are summed; the penalties and
/// losses are the one-rank run's. LoRA's merged-delta terms are refused by name.
#[test]
fn sharded_ewc_repeats_the_one_rank_run() {
    let ewc = format!(
        // λ large enough that the penalty moves the last step's loss (4.409 against 4.348 without).
        "max_steps: 4\newc_lambda: 1.0e9\newc_datasets:\n  - path: {}\n    type: completion\n    ds_type: text\n",
        root().join("models/stories260k/expected_greedy_t0_n256.txt").display()
    );
    let one = one_rank_with_accumulation_two("full", &ewc);
    let (two, _) = two_sharded_ranks("full", &ewc, "full_shard");
    assert_same_losses(&step_losses(one.path()), &step_losses(two.path()), 1e-5, "EWC full_shard");
    assert_same_weights(one.path(), two.path(), 1e-5);
    let penalties = |dir: &Path| -> Vec<f64> {
        std::fs::read_to_string(dir.join("out/metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).unwrap().get("ewc_penalty")?.as_f64())
            .collect()
    };
    let (a, b) = (penalties(one.path()), penalties(two.path()));
    assert_eq!(a.len(), 4, "{a:?}");
    assert!(a.iter().skip(1).any(|p| *p > 0.0), "{a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-12), "EWC penalty {x} vs {y}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_recipe(dir.path(), "lora", &format!("{ewc}fsdp: [full_shard, auto_wrap]\n"));
    let out = recipe().arg("run").arg(&path).args(["--device", "cpu", "--nproc-per-node", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ewc_lambda with LoRA"), "{stderr}");
}
