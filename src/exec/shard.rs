//! Sharded training on the c10d engine, as the plan's layout says (plan/shard.rs): `shard_grad_op`
//! (ZeRO-2), `full_shard` (ZeRO-3 / FSDP) and `hybrid_shard` (full sharding within a node,
//! replicas across nodes). Units are FSDP's auto wrap of a Llama: each decoder layer, and the
//! root (embeddings, final norm, head).
//!
//! Every tensor of a unit is flattened, padded to a multiple of the shard group's size and cut
//! into equal chunks; the rank at index k of its shard group holds chunk k of each (FSDP2's
//! per-parameter sharding, so optimizer state keeps its parameter's name and weight-decay group).
//! Trainable chunks are the fp32 masters the optimizer updates; frozen chunks keep their kind (a
//! 4-bit base is sharded as its packed codes and block scales, and dequantized once gathered).
//! - Gradients: when a unit's backward pass is done (the model calls `backward_done`), its
//!   gradients are reduce-scattered in one collective and added to this rank's gradient chunks,
//!   and the full gradients are freed. Hybrid: the chunks are summed over the replica group (the
//!   same index on every node) before the step.
//! - Step: the optimizer updates the chunks, clipping by the norm over every rank's chunks;
//!   shard_grad_op then all-gathers the updated chunks into the replicated parameters.
//! - full_shard: between uses a unit's parameters hold no storage; `gather` all-gathers its chunks
//!   (one collective per unit and kind) into them and `release` frees them again. Training
//!   recomputes each layer in the backward pass (gradient checkpointing), because a forward pass's
//!   parameters are released after it; `reshard_after_forward: false` keeps them until the
//!   layer's backward pass instead.
//! - Offload (exec/offload.rs): chunks live in host memory between uses; `assemble` copies them
//!   to the compute device for their all-gather, reduce-scattered gradient chunks are copied back,
//!   and the optimizer (built on the chunks) steps on the host.
//! - Checkpoints stay in the unsharded format: the trainable weights are gathered and each
//!   optimizer moment is assembled one tensor at a time, so a checkpoint resumes on any world
//!   size, and a resumed run cuts its chunks from the full tensors.

use super::c10d::{ProcessGroup, ReduceOp};
use super::distributed::Communicator;
use super::offload::Placement;
use super::optimizer::{self, AdamW};
use crate::model::llama::{CausalLm, Param, ShardUnits};
use crate::model::weights::{Checkpoint, Deferred};
use crate::plan::shard::{Collectives, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{Kind, Tensor};

/// The shard group (ranks that split one copy of the state) and, for hybrid sharding, the
/// replica group (ranks holding the same chunks on other nodes).
pub struct ShardGroups {
    shard: Option<ProcessGroup>,
    replicas: Option<ProcessGroup>,
    /// Ranks in the shard group, and this rank's index in it.
    size: usize,
    index: usize,
    /// This rank is in the first shard group (node 0 under hybrid sharding): it writes the
    /// checkpoint shard of its index.
    writes_shard: bool,
    /// ZeRO-1: gradients stay whole until the step, are all-reduced once and each rank keeps its
    /// chunk (rather than reduce-scattered as each unit's backward pass ends).
    optimizer_only: bool,
    full: bool,
    reshard_after_forward: bool,
}

impl ShardGroups {
    /// Joins the groups the layout needs (every rank calls this at the same point); None for a
    /// layout without sharding.
    pub fn join(comm: &Communicator, layout: &Layout, reshard_after_forward: bool) -> Result<Option<Self>, String> {
        if !layout.strategy.shards_optimizer() || comm.world_size < 2 {
            return Ok(None);
        }
        let (world, rank) = (comm.world_size, comm.rank);
        let size = (layout.shard_group_size as usize).clamp(1, world);
        if world % size != 0 {
            return Err(format!("{world} ranks do not split into shard groups of {size}"));
        }
        let (first, index) = (rank - rank % size, rank % size);
        // Every rank joins every group it belongs to, in the same order on all ranks.
        let shard_ranks: Vec<usize> = (first..first + size).collect();
        let shard = comm.subgroup(&format!("shard_{}", first / size), &shard_ranks)?;
        let replica_ranks: Vec<usize> = (index..world).step_by(size).collect();
        let replicas = comm.subgroup(&format!("replica_{index}"), &replica_ranks)?;
        Ok(Some(ShardGroups {
            shard,
            replicas,
            size,
            index,
            writes_shard: first == 0,
            optimizer_only: layout.strategy == crate::plan::shard::Strategy::ShardOptimizer,
            full: layout.strategy.shards_parameters(),
            reshard_after_forward,
        }))
    }
}

/// One tensor of a unit and this rank's chunk of it.
struct Piece {
    /// The optimizer's name for a trainable piece; the model's name otherwise.
    name: String,
    /// The model's tensor: full, or (full_shard, between uses) without storage.
    full: Tensor,
    shape: Vec<i64>,
    numel: i64,
    /// Elements per chunk (the padded size over the group size).
    chunk: i64,
    /// This rank's chunk [chunk]: the fp32 master of a trainable piece.
    shard: Tensor,
    /// The summed gradient of the chunk [chunk] (fp32), trainable pieces only; also the shard's
    /// `grad`, which the optimizer reads.
    grad: Option<Tensor>,
}

/// How one tensor is cut: `chunk` elements per rank of a flat `numel` (padded to `chunk` × group
/// size), viewed as `shape` once whole.
struct Cut {
    chunk: i64,
    numel: i64,
    shape: Vec<i64>,
}

impl Piece {
    fn cut(&self) -> Cut {
        Cut { chunk: self.chunk, numel: self.numel, shape: self.shape.clone() }
    }
}

pub struct Sharder {
    groups: ShardGroups,
    /// Where chunks live between uses (the compute device, or host memory under offload).
    placement: Placement,
    /// Payload bytes moved since the last `take_moved` (the plan's per-step figures count alike).
    moved: Cell<Collectives>,
    /// How many weights of `stream_weights`' list this rank has gathered so far.
    streamed: Cell<usize>,
    units: Vec<Vec<Piece>>,
    gathered: Vec<Cell<bool>>,
    /// EWC: each penalised piece (unit, index) with this rank's chunks of F and θ0.
    ewc: std::cell::RefCell<Vec<(usize, usize, Tensor, Tensor)>>,
}

fn failed(e: String) -> ! {
    // Inside the model's forward and backward passes errors travel as panics, as tch's do; the
    // run's catch_torch_errors turns them back into messages.
    panic!("{e}")
}

impl Sharder {
    /// Cuts the model's tensors into this rank's chunks (its full tensors are the same on every
    /// rank by now) and, for full sharding, releases them. `trainable` names the optimizer's
    /// parameters; `eight_bit_states`: the optimizer keeps 8-bit states, so trainable tensors are
    /// cut at their blocks.
    pub fn new(
        model: &CausalLm,
        groups: ShardGroups,
        placement: Placement,
        trainable: &[Param],
        eight_bit_states: bool,
    ) -> Result<Sharder, String> {
        let _guard = tch::no_grad_guard();
        let names: HashMap<usize, &str> =
            trainable.iter().map(|p| (p.tensor.data_ptr() as usize, p.name.as_str())).collect();
        let mut loaded = std::mem::take(&mut *model.loaded_chunks.borrow_mut());
        let (size, index) = (groups.size as i64, groups.index as i64);
        let units: Vec<Vec<Piece>> = model
            .unit_tensors()
            .into_iter()
            .map(|unit| {
                unit.into_iter()
                    .filter(|(_, t)| t.numel() > 0)
                    .map(|(name, full)| {
                        let numel = full.numel() as i64;
                        let trainable_name = names.get(&(full.data_ptr() as usize)).copied();
                        let chunk = chunk_len(numel, size, eight_bit_states && trainable_name.is_some());
                        // Loaded as a chunk already (CausalLm::load_chunked), or cut now.
                        let shard = loaded.remove(&name).unwrap_or_else(|| {
                            let flat = full.detach().reshape([-1]);
                            flat.constant_pad_nd([0, chunk * size - numel]).narrow(0, index * chunk, chunk).copy()
                        });
                        let is_trained = trainable_name.is_some();
                        let shard = placement.keep(shard, is_trained).unwrap_or_else(|e| failed(e));
                        let grad = trainable_name.map(|_| {
                            let zeros = Tensor::zeros([chunk], (Kind::Float, placement.home(true)));
                            placement.keep(zeros, true).unwrap_or_else(|e| failed(e))
                        });
                        if let Some(g) = &grad
                            && let Err(e) = super::torch_ops::set_grad(&shard, Some(g))
                        {
                            failed(e)
                        }
                        Piece {
                            name: trainable_name.map_or(name, str::to_string),
                            shape: full.size(),
                            numel,
                            chunk,
                            shard,
                            grad,
                            full,
                        }
                    })
                    .collect()
            })
            .collect();
        // Every trainable tensor must be in a unit, or the optimizer would never see it.
        let sharded: std::collections::HashSet<&str> =
            units.iter().flatten().filter(|p| p.grad.is_some()).map(|p| p.name.as_str()).collect();
        if let Some(p) = trainable.iter().find(|p| !sharded.contains(p.name.as_str())) {
            return Err(format!(
                "`{}` is trained by a method sharded training does not split yet; train without fsdp",
                p.name
            ));
        }
        let gathered = units.iter().map(|_| Cell::new(true)).collect();
        let sharder = Sharder {
            groups,
            placement,
            units,
            gathered,
            moved: Cell::new(Collectives::default()),
            streamed: Cell::new(0),
            ewc: Default::default(),
        };
        if sharder.groups.full {
            for u in 0..sharder.units.len() {
                sharder.release_unit(u);
            }
        }
        Ok(sharder)
    }

    /// Collective payload bytes since the last call (all-gathers count what they assemble,
    /// reduce-scatters what they reduce).
    pub fn take_moved(&self) -> Collectives {
        self.moved.take()
    }

    fn count(&self, f: impl FnOnce(&mut Collectives)) {
        let mut c = self.moved.get();
        f(&mut c);
        self.moved.set(c);
    }

    /// The trainable chunks, under their parameters' names, for the optimizer.
    pub fn optimizer_params(&self) -> Vec<Param> {
        self.trainable().map(|p| Param { name: p.name.clone(), tensor: p.shard.shallow_clone() }).collect()
    }

    fn trainable(&self) -> impl Iterator<Item = &Piece> {
        self.units.iter().flatten().filter(|p| p.grad.is_some())
    }

    /// Installs the unit hooks in the model (gather, release, gradient reduce-scatter).
    pub fn install(self: &Rc<Self>, model: &CausalLm) {
        *model.shard_units.borrow_mut() = Some(self.clone() as Rc<dyn ShardUnits>);
    }

    /// Removes the hooks, every unit gathered: the model is whole again.
    pub fn uninstall(&self, model: &CausalLm) -> Result<(), String> {
        for u in 0..self.units.len() {
            self.try_gather(u)?;
        }
        model.shard_units.borrow_mut().take();
        Ok(())
    }

    /// Whether the model must recompute each layer in its backward pass (full sharding releases a
    /// layer's parameters after its forward pass).
    pub fn needs_recompute(&self) -> bool {
        self.groups.full && self.groups.reshard_after_forward
    }

    /// Full tensors of unit `u`'s pieces of one kind, from every rank's chunks.
    fn assemble(&self, cuts: &[Cut], sources: &[Tensor]) -> Result<Vec<Tensor>, String> {
        // Offloaded chunks travel to the compute device for the collective.
        let local = self.placement.to_compute(&Tensor::cat(sources, 0));
        let total = local.numel() as i64;
        let all = match &self.groups.shard {
            Some(g) => g.all_gather(&local)?,
            None => local,
        };
        self.count(|c| c.all_gather += (all.numel() * all.kind().elt_size_in_bytes()) as u64);
        let mut offset = 0;
        let mut out = Vec::with_capacity(cuts.len());
        for (p, _) in cuts.iter().zip(sources) {
            let parts: Vec<Tensor> =
                (0..self.groups.size as i64).map(|r| all.narrow(0, r * total + offset, p.chunk)).collect();
            out.push(Tensor::cat(&parts, 0).narrow(0, 0, p.numel).view(p.shape.as_slice()));
            offset += p.chunk;
        }
        Ok(out)
    }

    /// Pieces of unit `u` grouped by kind (one all-gather each).
    fn by_kind(&self, u: usize) -> Vec<Vec<&Piece>> {
        let mut groups: Vec<Vec<&Piece>> = Vec::new();
        for p in &self.units[u] {
            match groups.iter_mut().find(|g| g[0].shard.kind() == p.shard.kind()) {
                Some(g) => g.push(p),
                None => groups.push(vec![p]),
            }
        }
        groups
    }

    fn try_gather(&self, u: usize) -> Result<(), String> {
        if self.gathered[u].get() {
            return Ok(());
        }
        for pieces in self.by_kind(u) {
            self.gather_into(&pieces)?;
        }
        self.gathered[u].set(true);
        Ok(())
    }

    /// `pieces` (of one kind) whole again from every rank's chunks: each model tensor takes the
    /// gathered storage in place, so layers, optimizer names and autograd see the same tensor.
    fn gather_into(&self, pieces: &[&Piece]) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        let sources: Vec<Tensor> = pieces.iter().map(|p| p.shard.shallow_clone()).collect();
        let cuts: Vec<Cut> = pieces.iter().map(|p| p.cut()).collect();
        for (p, full) in pieces.iter().zip(self.assemble(&cuts, &sources)?) {
            let _ = p.full.shallow_clone().set_source_tensor_(&full.to_kind(p.full.kind()));
        }
        Ok(())
    }

    fn release_unit(&self, u: usize) {
        if !self.groups.full || !self.gathered[u].get() {
            return;
        }
        let _guard = tch::no_grad_guard();
        for p in &self.units[u] {
            let _ = p.full.shallow_clone().set_();
        }
        self.gathered[u].set(false);
    }

    /// Each piece's whole gradient, flat and padded to `size` chunks; a parameter without a
    /// gradient this micro-batch contributes zeros, as FSDP's.
    fn padded_gradients(&self, pieces: &[&Piece], size: i64) -> Vec<Tensor> {
        pieces
            .iter()
            .map(|p| {
                let g = p.full.grad();
                let flat = if g.defined() {
                    g.to_kind(Kind::Float).reshape([-1])
                } else {
                    Tensor::zeros([p.numel], (Kind::Float, self.placement.compute))
                };
                flat.constant_pad_nd([0, p.chunk * size - p.numel])
            })
            .collect()
    }

    /// Reduce-scatters unit `u`'s gradients into this rank's chunks and frees them.
    fn reduce_gradients(&self, u: usize) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        let pieces: Vec<&Piece> = self.units[u].iter().filter(|p| p.grad.is_some()).collect();
        if pieces.is_empty() {
            return Ok(());
        }
        let size = self.groups.size as i64;
        let padded = self.padded_gradients(&pieces, size);
        let mut ordered = Vec::with_capacity(pieces.len() * size as usize);
        for r in 0..size {
            for (p, g) in pieces.iter().zip(&padded) {
                ordered.push(g.narrow(0, r * p.chunk, p.chunk));
            }
        }
        let input = Tensor::cat(&ordered, 0);
        drop(ordered);
        drop(padded);
        self.count(|c| c.reduce_scatter += (input.numel() * input.kind().elt_size_in_bytes()) as u64);
        let mine = match &self.groups.shard {
            Some(g) => g.reduce_scatter(&input)?,
            None => input,
        };
        let mut offset = 0;
        for p in pieces {
            if let Some(acc) = &p.grad {
                // Offloaded: the summed chunk goes back to the host, where it is accumulated.
                let mut acc = acc.shallow_clone();
                acc += mine.narrow(0, offset, p.chunk).to_device(acc.device());
            }
            offset += p.chunk;
            super::torch_ops::set_grad(&p.full, None)?;
        }
        Ok(())
    }

    /// ZeRO-1: the step's whole gradients all-reduced in one go; this rank keeps its chunks.
    fn all_reduce_gradients(&self) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        let pieces: Vec<&Piece> = self.trainable().collect();
        let size = self.groups.size as i64;
        let padded = self.padded_gradients(&pieces, size);
        if padded.is_empty() {
            return Ok(());
        }
        let mut flat = Tensor::cat(&padded, 0);
        drop(padded);
        if let Some(g) = &self.groups.shard {
            g.all_reduce(&mut flat, ReduceOp::Sum)?;
        }
        self.count(|c| c.all_reduce += (flat.numel() * flat.kind().elt_size_in_bytes()) as u64);
        let mut offset = 0;
        for p in pieces {
            if let Some(acc) = &p.grad {
                acc.shallow_clone().copy_(&flat.narrow(0, offset + self.groups.index as i64 * p.chunk, p.chunk));
            }
            offset += p.chunk * size;
            super::torch_ops::set_grad(&p.full, None)?;
        }
        Ok(())
    }

    /// Before the optimizer step: ZeRO-1 all-reduces the gradients; hybrid sharding sums the
    /// gradient chunks over the replicas.
    pub fn finish_gradients(&self) -> Result<(), String> {
        if self.groups.optimizer_only {
            return self.all_reduce_gradients();
        }
        let Some(g) = &self.groups.replicas else { return Ok(()) };
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.trainable().filter_map(|p| p.grad.as_ref().map(|t| t.shallow_clone())).collect();
        if grads.is_empty() {
            return Ok(());
        }
        let mut flat = self.placement.to_compute(&Tensor::cat(&grads, 0));
        g.all_reduce(&mut flat, ReduceOp::Sum)?;
        self.count(|c| c.all_reduce += (flat.numel() * flat.kind().elt_size_in_bytes()) as u64);
        let mut offset = 0;
        for t in grads {
            let n = t.numel() as i64;
            t.shallow_clone().copy_(&flat.narrow(0, offset, n));
            offset += n;
        }
        Ok(())
    }

    /// The gradient norm over every rank's chunks (a device scalar), clipping the chunks to
    /// `max_norm` (0: no clipping), as `clip_grad_norm_` over the whole model.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<Tensor, String> {
        let _guard = tch::no_grad_guard();
        let squares: Vec<Tensor> =
            self.trainable().filter_map(|p| p.grad.as_ref()).map(|g| g.square().sum(Kind::Float)).collect();
        if self.trainable().next().is_none() {
            return Ok(Tensor::zeros([], (Kind::Float, tch::Device::Cpu)));
        }
        let device = self.placement.compute;
        let mut sum = if squares.is_empty() {
            Tensor::zeros([1], (Kind::Float, device))
        } else {
            self.placement.to_compute(&Tensor::stack(&squares, 0).sum(Kind::Float).reshape([1]))
        };
        if let Some(g) = &self.groups.shard {
            g.all_reduce(&mut sum, ReduceOp::Sum)?;
        }
        let total = sum.sqrt().reshape([]);
        if max_norm > 0.0 {
            let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
            // The gradient chunks live where the trainable chunks do (host memory when offloaded).
            let coef = coef.to_device(self.placement.home(true));
            for g in self.trainable().filter_map(|p| p.grad.as_ref()) {
                let mut g = g.shallow_clone();
                g *= &coef;
            }
        }
        Ok(total)
    }

    /// Whether every rank's chunks are finite.
    pub fn all_finite(&self) -> Result<bool, String> {
        let _guard = tch::no_grad_guard();
        if self.trainable().next().is_none() {
            return Ok(true);
        }
        let device = self.placement.compute;
        let bad: Vec<Tensor> = self.trainable().map(|p| p.shard.isfinite().logical_not().any()).collect();
        let mut flag = Tensor::stack(&bad, 0).any().to_kind(Kind::Float).reshape([1]).to_device(device);
        if let Some(g) = &self.groups.shard {
            g.all_reduce(&mut flag, ReduceOp::Max)?;
        }
        Ok(!super::host_sync::read_flag(&flag, "whether the weights are finite")?)
    }

    /// After the optimizer step: shard_grad_op gathers the updated chunks into the replicated
    /// parameters (full sharding gathers them at their next use).
    pub fn after_step(&self) -> Result<(), String> {
        if self.groups.full {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        for u in 0..self.units.len() {
            let pieces: Vec<&Piece> = self.units[u].iter().filter(|p| p.grad.is_some()).collect();
            if pieces.is_empty() {
                continue;
            }
            let sources: Vec<Tensor> = pieces.iter().map(|p| p.shard.shallow_clone()).collect();
            let cuts: Vec<Cut> = pieces.iter().map(|p| p.cut()).collect();
            for (p, full) in pieces.iter().zip(self.assemble(&cuts, &sources)?) {
                p.full.shallow_clone().copy_(&full);
            }
        }
        Ok(())
    }

    /// Runs `f` with what a checkpoint or output writes gathered, then releases it again: the
    /// whole model for a full fine-tune (`whole`); for an adapter, the root unit and the trained
    /// tensors only, so the frozen base (a 4-bit 70B model, say) never has to fit on one rank.
    pub fn with_outputs_gathered<T>(&self, whole: bool, f: impl FnOnce() -> T) -> Result<T, String> {
        let root = self.units.len() - 1;
        for u in 0..self.units.len() {
            if whole || u == root {
                self.try_gather(u)?;
            } else {
                self.gather_trained(u)?;
            }
        }
        let out = f();
        for u in 0..self.units.len() {
            if whole || u == root || !self.groups.full {
                self.release_unit(u);
            } else {
                let _guard = tch::no_grad_guard();
                for p in self.units[u].iter().filter(|p| p.grad.is_some()) {
                    let _ = p.full.shallow_clone().set_();
                }
            }
        }
        Ok(out)
    }

    /// A full fine-tune's weights in `CausalLm::base_params`' order and names, each assembled when
    /// written (cast to `kind`): streamed one unit at a time, so no rank holds the whole model. Rank
    /// 0 writes the list; then every rank (rank 0 too, in case its writing stopped early) calls
    /// `follow_stream`, which gathers the units the list has not reached yet, in the same order.
    pub fn stream_weights<'a>(&'a self, model: &CausalLm, kind: Kind) -> Result<Vec<Deferred<'a>>, String> {
        // Every rank starts the list with nothing gathered.
        self.release_all();
        self.streamed.set(0);
        Ok(self
            .stream_order(model)?
            .into_iter()
            .map(|(u, i)| {
                let p = &self.units[u][i];
                Deferred::new(p.name.clone(), p.shape.clone(), kind, move || {
                    if let Err(e) = self.only(u) {
                        failed(e)
                    }
                    self.streamed.set(self.streamed.get() + 1);
                    p.full.detach().to_kind(kind)
                })
            })
            .collect())
    }

    /// The gathers of `stream_weights`' list from where this rank's writing reached (the start,
    /// on ranks that do not write), so every rank takes part in the same collectives; then every
    /// unit is released.
    pub fn follow_stream(&self, model: &CausalLm) -> Result<(), String> {
        let from = self.streamed.replace(0);
        if from == 0 {
            self.release_all();
        }
        for (u, _) in self.stream_order(model)?.into_iter().skip(from) {
            self.only(u)?;
        }
        self.release_all();
        Ok(())
    }

    /// Every unit released (no collective).
    pub fn release_all(&self) {
        for u in 0..self.units.len() {
            self.release_unit(u);
        }
    }

    /// (unit, piece) of each weight `base_params` lists, in its order.
    fn stream_order(&self, model: &CausalLm) -> Result<Vec<(usize, usize)>, String> {
        let at: HashMap<&str, (usize, usize)> = self
            .units
            .iter()
            .enumerate()
            .flat_map(|(u, pieces)| pieces.iter().enumerate().map(move |(i, p)| (p.name.as_str(), (u, i))))
            .collect();
        model
            .base_params()
            .iter()
            .map(|p| at.get(p.name.as_str()).copied().ok_or_else(|| format!("`{}` is in no shard unit", p.name)))
            .collect()
    }

    /// Unit `u` gathered and every other unit released.
    fn only(&self, u: usize) -> Result<(), String> {
        for other in (0..self.units.len()).filter(|&o| o != u) {
            self.release_unit(other);
        }
        self.try_gather(u)
    }

    /// Unit `u`'s trained tensors whole (its frozen ones stay released).
    fn gather_trained(&self, u: usize) -> Result<(), String> {
        if self.gathered[u].get() {
            return Ok(());
        }
        let pieces: Vec<&Piece> = self.units[u].iter().filter(|p| p.grad.is_some()).collect();
        if pieces.is_empty() {
            return Ok(());
        }
        // Trained pieces are all fp32 masters: one kind, one all-gather.
        self.gather_into(&pieces)
    }

    /// The optimizer's state in the unsharded format (`AdamW::state`'s names and shapes), each
    /// moment assembled from every rank's chunks; every rank of the shard group calls this, and
    /// each gets the whole state. 8-bit moments assemble as their codes (`.q8`, shaped like the
    /// parameter) and block scales (`.absmax`): chunks hold whole blocks, so each rank's are a run
    /// of the one-rank blocks.
    pub fn gather_optimizer_state(&self, optimizer: &AdamW) -> Result<Vec<(String, Tensor)>, String> {
        let _guard = tch::no_grad_guard();
        let shapes: HashMap<&str, &Piece> = self.trainable().map(|p| (p.name.as_str(), p)).collect();
        let mut out = Vec::new();
        for (name, t) in optimizer.state() {
            let (moment, part) = match name.rsplit_once('.') {
                Some((m, part @ ("q8" | "absmax"))) => (m, Some(part)),
                _ => (name.as_str(), None),
            };
            let param = moment.strip_suffix(".exp_avg").or_else(|| moment.strip_suffix(".exp_avg_sq"));
            let Some(p) = param.and_then(|n| shapes.get(n)) else {
                out.push((name, t));
                continue;
            };
            let full = match part {
                None => self.assemble(&[p.cut()], &[t.reshape([-1])])?.remove(0),
                // Codes travel as fp32 (exact for bytes), which every backend gathers.
                Some("q8") => {
                    self.assemble(&[p.cut()], &[t.reshape([-1]).to_kind(Kind::Float)])?.remove(0).to_kind(Kind::Uint8)
                }
                _ => {
                    let blocks = Cut {
                        chunk: p.chunk / optimizer::BLOCK,
                        numel: (p.numel + optimizer::BLOCK - 1) / optimizer::BLOCK,
                        shape: vec![(p.numel + optimizer::BLOCK - 1) / optimizer::BLOCK],
                    };
                    self.assemble(&[blocks], &[t.reshape([-1])])?.remove(0)
                }
            };
            out.push((name, full));
        }
        Ok(out)
    }

    /// Loads a checkpoint's (unsharded) optimizer state into the sharded optimizer: this rank's
    /// chunk of each moment (of an 8-bit moment, its codes and its blocks' scales; padding codes
    /// stand for zero, as quantizing the padded chunk gives).
    pub fn load_optimizer_state(&self, optimizer: &mut AdamW, ckpt: &Checkpoint) -> Result<(), String> {
        let pieces: HashMap<&str, &Piece> = self.trainable().map(|p| (p.name.as_str(), p)).collect();
        let (size, index) = (self.groups.size as i64, self.groups.index as i64);
        optimizer.load_state_with(ckpt, &|param: &str, moment: &str| -> Result<Tensor, String> {
            let p = pieces.get(param).ok_or_else(|| format!("`{param}` is not a sharded parameter"))?;
            let name = format!("{param}.{moment}");
            let device = p.shard.device();
            let cut = |full: Tensor, chunk: i64, numel: i64, fill: f64| {
                let padded = Tensor::full([chunk * size], fill, (full.kind(), device));
                padded.narrow(0, 0, numel).copy_(&full.reshape([-1]));
                padded.narrow(0, index * chunk, chunk).copy()
            };
            match moment.rsplit_once('.') {
                None => Ok(cut(ckpt.load(&name, &p.shape, Kind::Float, device)?, p.chunk, p.numel, 0.0)),
                Some((which, "q8")) => {
                    let full = ckpt.load(&name, &p.shape, Kind::Uint8, device)?;
                    Ok(cut(full, p.chunk, p.numel, zero_code(which == "exp_avg") as f64))
                }
                Some((_, _)) => {
                    let blocks = (p.numel + optimizer::BLOCK - 1) / optimizer::BLOCK;
                    let full = ckpt.load(&name, &[blocks], Kind::Float, device)?;
                    Ok(cut(full, p.chunk / optimizer::BLOCK, blocks, 0.0))
                }
            }
        })
    }

    /// EWC under sharding: this rank's chunks of each term's F and θ0, cut as its trainable chunks.
    pub fn set_ewc(&self, ewc: &super::ewc::Ewc) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        let at: HashMap<&str, (usize, usize)> = self
            .units
            .iter()
            .enumerate()
            .flat_map(|(u, pieces)| {
                pieces.iter().enumerate().filter(|(_, p)| p.grad.is_some()).map(move |(i, p)| (p.name.as_str(), (u, i)))
            })
            .collect();
        let (size, index) = (self.groups.size as i64, self.groups.index as i64);
        let mut chunks = Vec::new();
        for (name, fisher, anchor) in ewc.direct_terms()? {
            let &(u, i) = at.get(name).ok_or_else(|| format!("EWC: `{name}` is not a sharded trainable tensor"))?;
            let p = &self.units[u][i];
            let cut = |t: &Tensor| {
                let flat = t.to_kind(Kind::Float).reshape([-1]).constant_pad_nd([0, p.chunk * size - p.numel]);
                flat.narrow(0, index * p.chunk, p.chunk).to_device(p.shard.device()).copy()
            };
            chunks.push((u, i, cut(fisher), cut(anchor)));
        }
        *self.ewc.borrow_mut() = chunks;
        Ok(())
    }

    /// EWC's penalty λ/2 · Σ F ⊙ (θ − θ0)² over every rank's chunks (a device scalar), its gradient
    /// λ · F ⊙ (θ − θ0) added to this rank's gradient chunks, times the loss scale while the
    /// gradients carry it (fp16). Called once the step's gradients are summed, so it counts once.
    pub fn add_ewc_gradient(&self, lambda: f64, scale: Option<&Tensor>) -> Result<Tensor, String> {
        let _guard = tch::no_grad_guard();
        let mut sum = Tensor::zeros([1], (Kind::Float, self.placement.compute));
        for (u, i, fisher, anchor) in self.ewc.borrow().iter() {
            let p = &self.units[*u][*i];
            let diff = &p.shard - anchor;
            sum += self.placement.to_compute(&(fisher * diff.square()).sum(Kind::Float).reshape([1]));
            if let Some(g) = &p.grad {
                let mut add = fisher * &diff * lambda;
                if let Some(s) = scale {
                    add *= s.to_device(g.device()).reshape([]);
                }
                let mut g = g.shallow_clone();
                g += add;
            }
        }
        if let Some(g) = &self.groups.shard {
            g.all_reduce(&mut sum, ReduceOp::Sum)?;
        }
        Ok((sum * (lambda / 2.0)).reshape([]))
    }

    /// Each trainable chunk's whole parameter size, in `optimizer_params`' order (it decides
    /// which get 8-bit states, as on one rank).
    pub fn whole_sizes(&self) -> Vec<i64> {
        self.trainable().map(|p| p.numel).collect()
    }
}

/// The byte whose value is zero in 8-bit AdamW's code: the signed map's for the first moment, the
/// unsigned one's for the second.
fn zero_code(signed: bool) -> i64 {
    let map = if signed { crate::model::nf4::dynamic_map() } else { crate::model::nf4::unsigned_dynamic_map() };
    map.abs().argmin(0, false).int64_value(&[])
}

/// Elements per rank of a tensor of `numel` cut `size` ways: its padded size over `size`, rounded
/// up to whole 256-element blocks when it gets 8-bit optimizer states (`blocks`), so each rank's
/// blocks are the one-rank run's and its 8-bit states the same bytes.
fn chunk_len(numel: i64, size: i64, blocks: bool) -> i64 {
    if blocks && numel >= optimizer::MIN_8BIT_SIZE {
        (numel + size * optimizer::BLOCK - 1) / (size * optimizer::BLOCK) * optimizer::BLOCK
    } else {
        (numel + size - 1) / size
    }
}

/// A sharded checkpoint's layout (`shards/index.json`): the shard group's size and each trainable
/// tensor's shape and chunk length, so any world size can assemble it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ShardIndex {
    shard_group_size: usize,
    /// Whether the optimizer's moments are there (not with save_only_model).
    optimizer: bool,
    tensors: Vec<ShardEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ShardEntry {
    name: String,
    shape: Vec<i64>,
    chunk: i64,
    /// Its moments are 8-bit (codes `.q8` and block scales `.absmax` per chunk).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    eight_bit: bool,
}

fn shard_file(dir: &Path, index: usize, size: usize) -> PathBuf {
    dir.join("shards").join(format!("rank-{index:05}-of-{size:05}.safetensors"))
}

impl Sharder {
    /// Writes this rank's part of a sharded checkpoint (`state_dict_type: SHARDED_STATE_DICT`) into
    /// the staging folder `dir`: its chunks of the trainable weights and of each optimizer moment,
    /// as `NAME`, `NAME.exp_avg` and `NAME.exp_avg_sq` (and `step`); rank 0 adds the index. Ranks of
    /// other replica groups hold the same chunks and write nothing.
    pub fn write_shard(&self, dir: &Path, optimizer: Option<&AdamW>, main: bool) -> Result<(), String> {
        std::fs::create_dir_all(dir.join("shards")).map_err(|e| format!("{}: {e}", dir.display()))?;
        if self.groups.writes_shard {
            let mut tensors: Vec<(String, Tensor)> =
                self.trainable().map(|p| (p.name.clone(), p.shard.shallow_clone())).collect();
            tensors.extend(optimizer.map(AdamW::state).unwrap_or_default());
            crate::model::weights::save(&shard_file(dir, self.groups.index, self.groups.size), &tensors)?;
        }
        if main {
            let index = ShardIndex {
                shard_group_size: self.groups.size,
                optimizer: optimizer.is_some(),
                tensors: self
                    .trainable()
                    .map(|p| ShardEntry {
                        name: p.name.clone(),
                        shape: p.shape.clone(),
                        chunk: p.chunk,
                        eight_bit: optimizer.is_some_and(|o| o.has_eight_bit_state(&p.name)),
                    })
                    .collect(),
            };
            let text = serde_json::to_string_pretty(&index).map_err(|e| e.to_string())? + "\n";
            crate::model::weights::write_atomic(&dir.join("shards/index.json"), text.as_bytes())?;
        }
        Ok(())
    }
}

/// Whether checkpoint folder `dir` holds per-rank shards rather than whole tensors.
pub fn is_sharded_checkpoint(dir: &Path) -> bool {
    dir.join("shards/index.json").is_file()
}

fn read_index(dir: &Path) -> Result<ShardIndex, String> {
    let path = dir.join("shards/index.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether sharded checkpoint `dir` holds the optimizer's state (it does unless save_only_model).
pub fn sharded_checkpoint_has_optimizer(dir: &Path) -> Result<bool, String> {
    Ok(read_index(dir)?.optimizer)
}

/// The whole tensors of sharded checkpoint `dir`, assembled one tensor at a time from every
/// rank's shard (whatever world size wrote them) into `into`: `weights.safetensors` (the trainable
/// weights) and `optimizer.safetensors` (each moment and `step`, as a whole checkpoint has them).
pub fn assemble_checkpoint(dir: &Path, into: &Path) -> Result<(PathBuf, PathBuf), String> {
    let index = read_index(dir)?;
    let size = index.shard_group_size;
    let shards: Vec<Checkpoint> =
        (0..size).map(|k| Checkpoint::open_files(dir, &[shard_file(dir, k, size)])).collect::<Result<_, _>>()?;
    let cpu = tch::Device::Cpu;
    let mut weights: Vec<crate::model::weights::Deferred> = Vec::new();
    let mut moments: Vec<crate::model::weights::Deferred> = Vec::new();
    for e in &index.tensors {
        let numel = e.shape.iter().product::<i64>();
        let blocks = (numel + optimizer::BLOCK - 1) / optimizer::BLOCK;
        // (name, whole shape, kind, elements per rank's chunk, elements whole, is the weight)
        let mut names = vec![(e.name.clone(), e.shape.clone(), Kind::Float, e.chunk, numel, true)];
        if index.optimizer {
            for moment in ["exp_avg", "exp_avg_sq"] {
                let name = format!("{}.{moment}", e.name);
                if e.eight_bit {
                    names.push((format!("{name}.q8"), e.shape.clone(), Kind::Uint8, e.chunk, numel, false));
                    let per_rank = e.chunk / optimizer::BLOCK;
                    names.push((format!("{name}.absmax"), vec![blocks], Kind::Float, per_rank, blocks, false));
                } else {
                    names.push((name, e.shape.clone(), Kind::Float, e.chunk, numel, false));
                }
            }
        }
        for (name, shape, kind, chunk, numel, is_weight) in names {
            // Checked here, so assembling below cannot fail on a missing chunk.
            if let Some(k) = shards.iter().position(|s| s.shape(&name) != Some(&[chunk][..])) {
                return Err(format!("{}: `{name}` is missing or not [{chunk}]", shard_file(dir, k, size).display()));
            }
            let shards = &shards;
            let whole = crate::model::weights::Deferred::new(name.clone(), shape.clone(), kind, move || {
                let parts: Vec<Tensor> =
                    shards.iter().map(|s| s.load(&name, &[chunk], kind, cpu).unwrap_or_else(|e| failed(e))).collect();
                Tensor::cat(&parts, 0).narrow(0, 0, numel).view(shape.as_slice())
            });
            if is_weight { weights.push(whole) } else { moments.push(whole) }
        }
    }
    if index.optimizer {
        moments.push(crate::model::weights::Deferred::ready(
            "step".into(),
            shards[0].load("step", &[], Kind::Int64, cpu)?,
        ));
    }
    let (w, o) = (into.join("weights.safetensors"), into.join("optimizer.safetensors"));
    crate::model::weights::save_deferred(&w, weights)?;
    crate::model::weights::save_deferred(&o, moments)?;
    Ok((w, o))
}

impl ShardUnits for Sharder {
    fn gather(&self, unit: usize) {
        if let Err(e) = self.try_gather(unit) {
            failed(e)
        }
    }

    fn forward_done(&self, unit: usize) {
        if self.groups.reshard_after_forward {
            self.release_unit(unit);
        }
    }

    fn release(&self, unit: usize) {
        self.release_unit(unit);
    }

    fn backward_done(&self, unit: usize) {
        // ZeRO-1 keeps whole gradients until the step.
        if self.groups.optimizer_only {
            return;
        }
        if let Err(e) = self.reduce_gradients(unit) {
            failed(e)
        }
        self.release_unit(unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_with_8_bit_states_are_cut_at_whole_blocks() {
        // stories260k's MLP weights: 64 × 172 = 11,008 elements, 43 blocks of 256.
        assert_eq!(chunk_len(11_008, 2, false), 5_504);
        assert_eq!(chunk_len(11_008, 2, true), 22 * 256);
        assert_eq!(chunk_len(11_008, 3, true), 15 * 256);
        // Under 4,096 elements the states stay 32-bit: plain chunks.
        assert_eq!(chunk_len(2_048, 2, true), 1_024);
        assert_eq!(chunk_len(4_097, 2, true), 9 * 256);
    }

    #[test]
    fn the_zero_codes_stand_for_zero() {
        for signed in [true, false] {
            let map = if signed { crate::model::nf4::dynamic_map() } else { crate::model::nf4::unsigned_dynamic_map() };
            assert_eq!(map.double_value(&[zero_code(signed)]), 0.0);
        }
    }
}
