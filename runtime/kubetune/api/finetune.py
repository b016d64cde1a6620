"""FineTuneJob: one fine-tuning run, in a cluster (the CRD) or on a laptop (`kubetune train`)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .base import (API_VERSION, KubeModel, ObjectMeta, PriorityClassName, QueueName, Rule, StorageSpec, Uri,
                   unchangeable)
from .pods import PodResources, PodSettings
from .enums import (LLAVA_FORMATS, PREFERENCE_FORMATS, PREFERENCE_METHODS, DatasetFormat, DeepSpeedPreset, DType,
                    FileType, LrSchedule, OptimizerType, Precision, PromptTemplate, StepUnit, SystemTemplate)
from .method import DpoSpec, LoraSpec, MethodSpec, OrpoSpec, QuantizationSpec, RewardSpec  # noqa: F401 (re-exported)
from .vision import VisionModelSpec

# Sections a `baseConfig` fills in. The CRD carries no defaults or required keys inside them: the apiserver
# would otherwise stamp defaults that then override the predefined config the user asked for.
from .finetune_status import (Artifacts, CheckpointRef, Failure, FailureCause, FineTunePhase,  # noqa: F401 (re-exported)
                              FineTuneJobStatus, Progress)

RECIPE = {"x-kubetune-recipe": True}
DEFAULT_MAX_LENGTH = 2048  # dataset.maxLength's default, which a CEL rule also needs


class ModelSpec(KubeModel):
    """The base model to fine-tune."""

    uri: Uri
    """Where the model lives: `hf://org/name[@revision]`, `s3://bucket/prefix`, `pvc://claim/path`, `file:///path` or a
    local path (relative to the config file)."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code (needed by InternLM2, ChatGLM3, Baichuan2...). Off unless you opt in."""
    dtype: DType = DType.AUTO
    """Weight dtype when loading; `auto` follows the precision (bf16 where supported, else fp16; fp32 on CPU)."""
    eos_token: str | None = Field(default=None, min_length=1, max_length=64)
    """Use this token as the tokenizer's end-of-sequence token instead of the one it ships (XTuner's tokenizer
    `eos_token=`; Qwen-1's and MiniCPM's configs set it): it ends every answer in the training data and in chat."""
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    """Attention kernel; `auto` picks flash_attention_2 when installed and needed for varlen attention, else sdpa."""
    router_aux_loss_coef: float | None = Field(default=None, ge=0, le=10)
    """Mixture-of-experts models: weight of the routers' load-balancing loss added to the training loss
    (transformers' `router_aux_loss_coef`: Mixtral 0.02, Qwen-MoE 0.001). Unset: as the model's config says (off
    unless it sets `output_router_logits`); 0 turns it off. Refused for models without such a loss."""
    vision: VisionModelSpec | None = None
    """Makes this a LLaVA model: the image encoder and projector (dataset.format llava)."""


class DatasetSource(KubeModel):
    """One more dataset, concatenated with the main one (e.g. alpaca + alpaca_zh)."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("system", "systemTemplate"), "set at most one of system and systemTemplate",
             "!(has(self.system) && has(self.systemTemplate))", lambda s, t: s is None or t is None),
    )

    uri: Uri
    """Where the data lives (json, jsonl, parquet or arrow; a file or a directory of files); local paths are relative to
    the config file."""
    format: DatasetFormat = DatasetFormat.XTUNER
    """Row layout (see `kubetune list-dataset-format`)."""
    file_type: FileType = FileType.AUTO
    """File type; `auto` goes by the extension."""
    split: str = "train"
    """Split to read from hub datasets."""
    system: str | None = None
    """System prompt for every sample of this source."""
    system_template: SystemTemplate | None = None
    """A predefined system prompt (XTuner's SYSTEM_TEMPLATE)."""
    max_samples: int | None = Field(default=None, ge=1)
    """Randomly keep at most this many rows (XTuner's max_dataset_length)."""


class DatasetSpec(DatasetSource):
    """Training data and how it becomes token sequences."""

    __rules__: ClassVar = DatasetSource.__rules__ + (
        Rule(("varlenAttention", "packToMaxLength"), "varlenAttention needs packToMaxLength: true",
             "!has(self.varlenAttention) || !self.varlenAttention || !has(self.packToMaxLength) || "
             "self.packToMaxLength",
             lambda varlen, pack: not varlen or pack),
        Rule(("packToMaxLength", "format"), "format llava needs packToMaxLength: false (one image per sequence)",
             f"!has(self.format) || !(self.format in {list(LLAVA_FORMATS)}) || "
             "(has(self.packToMaxLength) && !self.packToMaxLength)",
             lambda pack, fmt: fmt not in LLAVA_FORMATS or not pack),
        Rule(("maxPackedLength", "maxLength", "packToMaxLength"),
             "maxPackedLength needs packToMaxLength: true and at least maxLength tokens",
             "!has(self.maxPackedLength) || ((!has(self.packToMaxLength) || self.packToMaxLength) && "
             f"self.maxPackedLength >= (has(self.maxLength) ? self.maxLength : {DEFAULT_MAX_LENGTH}))",
             lambda budget, n, pack: budget is None or (pack and budget >= n)),
        Rule(("imageFolder", "padImageToSquare", "groupByModalityLength", "format"),
             "imageFolder, padImageToSquare and groupByModalityLength are only valid with format llava",
             f"(has(self.format) && self.format in {list(LLAVA_FORMATS)}) || (!has(self.imageFolder) && "
             "(!has(self.padImageToSquare) || !self.padImageToSquare) && "
             "(!has(self.groupByModalityLength) || !self.groupByModalityLength))",
             lambda folder, square, group, fmt: fmt in LLAVA_FORMATS or (folder is None and not square and not group)),
    )

    prompt_template: PromptTemplate = PromptTemplate.AUTO
    """Chat template: one of XTuner's templates, or `auto` for the tokenizer's own chat_template."""
    max_length: int = Field(default=DEFAULT_MAX_LENGTH, ge=16, le=1048576)
    """Tokens per training sequence; longer samples are truncated and counted in the data report. Preference pairs:
    the limit for prompt + response of each side (a packed sequence holds up to 2 x maxLength)."""
    max_response_length: int | None = Field(default=None, ge=1, le=1048576)
    """Preference pairs: responses longer than this are cut to it first; then the prompt is cut from the left so that
    prompt + response fits maxLength. Every cut pair is counted in the data report."""
    pack_to_max_length: bool = True
    """Concatenate whole samples into sequences of maxLength (far fewer padding tokens)."""
    max_packed_length: int | None = Field(default=None, ge=16, le=1048576)
    """A token budget per packed sequence (XTuner's max_packed_length): whole samples, each cut into pieces of at
    most maxLength, are packed into sequences of up to this many tokens, so one micro-batch carries about this many
    real tokens in one forward pass instead of several small ones. Position ids and attention still restart per
    sample and every labelled token still weighs the same. Unset: maxLength. Preference pairs: at least 2 x
    maxLength."""
    shuffle_before_pack: bool = True
    """Shuffle samples before packing so a sequence mixes sources."""
    varlen_attention: bool = False
    """Keep packed samples from attending to each other (cu_seqlens); needs packToMaxLength."""
    num_proc: int | None = Field(default=None, ge=1, le=256)
    """Processes that tokenize in parallel; unset uses min(8, CPUs)."""
    concat: list[DatasetSource] = Field(default_factory=list, max_length=32)
    """More datasets, each with its own format and system prompt, concatenated before packing."""
    image_folder: Uri | None = None
    """Format llava: where the rows' `image` paths are relative to (local path, `s3://`, `pvc://`...). Default: the
    data file's directory."""
    pad_image_to_square: bool = False
    """Format llava: pad each image to a square with the encoder's mean colour before resizing (LLaVA-1.5's
    finetune stage), instead of centre-cropping."""
    group_by_modality_length: bool = False
    """Format llava: batch image samples with image samples and text-only ones with text-only ones, each of similar
    length (LLaVA's modality-length grouped sampler)."""


class OptimizerSpec(KubeModel):
    """Optimizer and learning rate."""

    type: OptimizerType = OptimizerType.ADAMW
    """Optimizer class."""
    lr: float = Field(default=2e-4, gt=0, le=1)
    """Peak learning rate."""
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(default_factory=lambda: [0.9, 0.999], min_length=2,
                                                             max_length=2)
    """Adam betas [beta1, beta2]."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Decoupled weight decay."""
    eps: float = Field(default=1e-8, gt=0)
    """Adam epsilon."""


class TrainingSpec(KubeModel):
    """Optimisation loop settings."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("maxSteps", "maxEpochs"), "set exactly one of maxEpochs and maxSteps, not both",
             "!(has(self.maxEpochs) && has(self.maxSteps))", lambda s, e: s is None or e is None),
    )

    batch_size: int = Field(default=1, ge=1, le=4096)
    """Sequences per device per micro-step."""
    accumulative_counts: int = Field(default=16, ge=1, le=65536)
    """Micro-batches per optimizer step (gradient accumulation); the run's last step takes the micro-batches left."""
    step_unit: StepUnit = StepUnit.OPTIMIZER
    """What maxSteps, logEverySteps, checkpoints.everySteps, evaluation.everySteps and the N of `iter_N` count:
    `optimizer` steps, or `iteration`s, micro-batches (XTuner's and mmengine's unit; imported XTuner configs use it,
    the schedule then moves every micro-batch as XTuner's does). A checkpoint or evaluation that falls inside an
    accumulation window has the weights of the step before it, as XTuner's has."""
    max_epochs: int | None = Field(default=None, ge=1)
    """Passes over the data (3 when neither maxEpochs nor maxSteps is set)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Steps to run, in stepUnit, instead of maxEpochs."""
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    """Optimizer and learning rate."""
    max_norm: float = Field(default=1.0, ge=0)
    """Clip the global gradient norm to this value; 0 does not clip (XTuner's clip_grad=None)."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Fraction of the run with linear warm-up from warmupStartFactor·lr to lr (mmengine's LinearLR: lr is
    reached on the warm-up's last step), after which the schedule runs."""
    warmup_start_factor: float = Field(default=1e-5, gt=0, le=1)
    """Where the warm-up starts, as a fraction of lr (XTuner's LinearLR start_factor)."""
    lr_schedule: LrSchedule = LrSchedule.COSINE
    """Decay after warm-up: cosine (XTuner's), linear, or constant."""
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    """Where cosine and linear decay end, as a fraction of lr (XTuner's CosineAnnealingLR eta_min / lr)."""
    precision: Precision = Precision.AUTO
    """Mixed precision; `auto` is bf16 where supported, else fp16 with loss scaling; fp32 on CPU."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward to save memory."""
    loss_kernel: Literal["auto", "logits", "chunked", "liger"] = "auto"
    """How the output layer and the loss are computed. `logits`: transformers' way, the whole vocabulary's logits of
    every labelled token at once (152k vocabulary × 8k tokens = 4.9 GB in fp32). `chunked`: plain PyTorch, a few
    hundred tokens at a time with the gradients worked out on the way (the same loss and gradients, never the full
    logits). `liger`: Liger-Kernel's fused linear cross-entropy (CUDA, package liger-kernel). `auto`: liger where it
    runs, else chunked, else (LLaVA, remote code, ZeRO-3, an adapted output layer) logits."""
    sequence_parallel_size: int = Field(default=1, ge=1, le=64)
    """Split each sequence over this many GPUs (DeepSpeed-Ulysses); must divide dataset.maxLength."""
    deepspeed: DeepSpeedPreset = DeepSpeedPreset.NONE
    """DeepSpeed ZeRO preset (XTuner's JSON files); `none` uses plain data parallel."""
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)  # numpy and the samplers take 32-bit seeds
    """Random seed; unset picks one and records it in the work dir, so resumes stay exact."""
    deterministic: bool = False
    """Deterministic kernels only (XTuner's randomness.deterministic: torch.use_deterministic_algorithms, cuDNN
    without benchmarking): slower on GPUs, the same numbers every run on the same hardware."""
    shuffle: bool = True
    """Visit the data in a new random order every epoch (a pure function of seed and epoch); false keeps the
    dataset's order (XTuner's DefaultSampler shuffle=False)."""
    dataloader_num_workers: int = Field(default=0, ge=0, le=64)
    """Dataloader worker processes."""
    log_every_steps: int = Field(default=10, ge=1)
    """Log (and publish progress) every this many steps (stepUnit)."""

    @model_validator(mode="after")
    def _default_length(self):
        if self.max_epochs is None and self.max_steps is None:
            self.max_epochs = 3
        return self


class CheckpointSpec(KubeModel):
    """When checkpoints are written, how many stay, and where they go."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("everySteps", "byEpoch"), "set either everySteps or byEpoch: true, not both",
             "!(has(self.everySteps) && has(self.byEpoch) && self.byEpoch)",
             lambda steps, by_epoch: steps is None or not by_epoch),
        Rule(("keep",), "keep must be -1 (keep all) or at least 1",
             "!has(self.keep) || self.keep == -1 || self.keep >= 1", lambda keep: keep == -1 or keep >= 1),
    )

    every_steps: int | None = Field(default=None, ge=0)
    """Save every this many steps, in training.stepUnit (500 unless byEpoch is set); 0 saves only at the end
    (XTuner's interval=-1)."""
    by_epoch: bool = False
    """Save at the end of every epoch instead of every N steps (by iterations: at the epoch's last micro-batch)."""
    keep: int = 2
    """Checkpoints to keep (XTuner's save_total_limit); -1 keeps all. Applied to the remote copy too."""
    uri: Uri | None = None
    """Where checkpoints and exported artifacts go (`s3://...`, `pvc://...`); unset keeps them in the work dir."""
    save_optimizer: bool = True
    """Write the optimizer state with each checkpoint (XTuner's save_optimizer). false: weights, schedule, RNG and
    data position only (AdamW's moments are twice the trainable weights: a full fine-tune's checkpoint shrinks to
    about a third); a resume from such a checkpoint starts the optimizer afresh and says so."""

    @model_validator(mode="after")
    def _default_interval(self):
        if self.every_steps is None and not self.by_epoch:
            self.every_steps = 500
        return self


class EvaluationSpec(KubeModel):
    """Sample generations during training (XTuner's EvaluateChatHook)."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("system", "systemTemplate"), "set at most one of system and systemTemplate",
             "!(has(self.system) && has(self.systemTemplate))", lambda s, t: s is None or t is None),
    )

    every_steps: int = Field(default=500, ge=1)
    """Generate for every input every this many steps, in training.stepUnit (and before and after training)."""
    inputs: list[str] = Field(default_factory=list, max_length=64)
    """Prompts to answer; empty disables evaluation."""
    max_new_tokens: int = Field(default=600, ge=1, le=65536)
    """Longest answer."""
    system: str | None = None
    """System prompt of the evaluation prompts only, never of the training data (XTuner's EvaluateChatHook
    `system`); default: the dataset's own system prompt, if it sets one."""
    system_template: SystemTemplate | None = None
    """A predefined evaluation system prompt (XTuner's `SYSTEM_TEMPLATE.<name>`)."""
    stop_words: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list,
                                                                                 max_length=16)
    """Strings that end an answer besides the end-of-sequence token and the prompt template's stop words (XTuner's
    EvaluateChatHook `stop_words`)."""
    greedy: bool = False
    """Decode greedily; default: XTuner's EvaluateChatHook sampling (temperature 0.1, top-p 0.75, top-k 40, seeded
    by the step, so a run's outputs repeat)."""


class FineTuneResources(PodSettings):
    """Gang size and placement: `nodes` pods with `gpusPerNode` GPUs each."""

    nodes: int = Field(default=1, ge=1, le=1024)
    """Pods in the gang (torchrun --nnodes)."""
    gpus_per_node: int = Field(default=0, ge=0, le=64)
    """GPUs per pod (torchrun --nproc_per_node, the `nvidia.com/gpu` limit); 0 trains on CPU."""
    termination_grace_period_seconds: int = Field(default=300, ge=1, le=86400)
    """Time a pod gets between SIGTERM (a preemption, eviction or drain) and SIGKILL: the current step finishes and
    a checkpoint of it is written and uploaded in it, so size it for one checkpoint write of this model."""


class RunPolicy(KubeModel):
    """Lifecycle: suspension, restarts, deadlines, queueing."""

    suspend: bool = False
    """Create nothing (or delete running pods) until set back to false."""
    max_restarts: int = Field(default=3, ge=0, le=100)
    """Whole-gang restarts after a failure, each resuming from the latest complete checkpoint."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the run (no restart) after this many seconds of running; a restarted gang gets only what the failed
    attempts left of it."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the FineTuneJob, and with it its Job and pods, this long after it finished and its exports are done
    (checkpoints and exported artifacts in storage stay)."""
    max_disruptions: int = Field(default=10, ge=0, le=1000)
    """Whole-gang restarts after disruptions (a pod preempted, evicted or drained: its DisruptionTarget condition)
    that do not count against maxRestarts; past this many the job fails, so a node that keeps failing cannot loop it
    forever. A Kueue preemption is no restart (the Job is only suspended) and counts against neither."""
    queue_name: QueueName | None = None
    """Kueue LocalQueue: the Job is created suspended with `kueue.x-k8s.io/queue-name` and Kueue admits it (and may
    preempt it: the job then waits as Preempted and resumes from its newest checkpoint when admitted again). The
    export ConvertJobs go to the same queue."""
    workload_priority_class: PriorityClassName | None = None
    """Kueue WorkloadPriorityClass (`kueue.x-k8s.io/priority-class`): which queued jobs are admitted first and which
    running ones Kueue may preempt for them. A `kueue.x-k8s.io/priority-class` label on the FineTuneJob works too."""


class ExportSpec(KubeModel):
    """What to export into `<checkpoints.uri>/export/` after success."""

    adapter: bool = True
    """Convert the final checkpoint to Hugging Face format (a PEFT adapter, or the full model for method full)."""
    merge: bool = False
    """Also merge the adapter into the base model (lora and qlora only)."""
    resources: PodResources = Field(default_factory=PodResources)
    """The export ConvertJobs' pods. What is left at its default is the job's own: image, pull policy, service
    account (the same IRSA role reads and writes its storage), node selector, tolerations, affinity, priority class,
    memory, cache volume, env, volumes and mounts; CPU, GPUs and the work volume are the export's own."""


class FineTuneJobSpec(KubeModel):
    """What to fine-tune, on which data, how, and where it runs."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("checkpoints.saveOptimizer", "training.deepspeed"),
             "checkpoints.saveOptimizer: false is not available with a DeepSpeed preset yet (DeepSpeed writes its "
             "optimizer partitions with the weights)",
             "!has(self.checkpoints) || !has(self.checkpoints.saveOptimizer) || self.checkpoints.saveOptimizer || "
             "!has(self.training) || !has(self.training.deepspeed) || self.training.deepspeed == 'none'",
             lambda save, ds: save or str(ds) == "none"),
        Rule(("training.deepspeed", "method.quantization.bits"),
             "8-bit qlora cannot be combined with ZeRO-3: int8 weights have no float storage DeepSpeed can "
             "partition; use 4 bits (stored in the compute dtype under ZeRO-3) or zero1/zero2",
             "!has(self.method) || !has(self.method.quantization) || !has(self.method.quantization.bits) || "
             "self.method.quantization.bits != 8 || !has(self.training) || !has(self.training.deepspeed) || "
             "!self.training.deepspeed.startsWith('zero3')",
             lambda ds, bits: bits != 8 or not str(ds).startswith("zero3")),
        Rule(("dataset.format", "method.type"),
             "methods dpo, orpo and reward train on preference pairs (dataset.format preference, orpo_dpo_mix_40k "
             "or intel_orca_dpo), and those formats need one of these methods",
             "has(self.baseConfig) || "
             "((has(self.method) && has(self.method.type) && self.method.type in ['dpo', 'orpo', 'reward']) == "
             "(has(self.dataset) && has(self.dataset.format) && "
             "self.dataset.format in ['preference', 'orpo_dpo_mix_40k', 'intel_orca_dpo']))",
             lambda f, t: (str(t) in PREFERENCE_METHODS) == (str(f) in PREFERENCE_FORMATS)),
        Rule(("training.deepspeed", "method.parameters", "method.type"),
             "full-parameter dpo keeps a frozen reference copy, which ZeRO-3 cannot partition; use zero1/zero2 or "
             "lora",
             "!has(self.method) || !has(self.method.type) || self.method.type != 'dpo' || "
             "!has(self.method.parameters) || self.method.parameters != 'full' || !has(self.training) || "
             "!has(self.training.deepspeed) || !self.training.deepspeed.startsWith('zero3')",
             lambda ds, p, t: not (t == "dpo" and p == "full" and str(ds).startswith("zero3"))),
        Rule(("training.sequenceParallelSize", "method.type"),
             "sequence parallelism is not available for reward models (dpo and orpo have it)",
             "!has(self.training) || !has(self.training.sequenceParallelSize) || "
             "self.training.sequenceParallelSize == 1 || !has(self.method) || !has(self.method.type) || "
             "self.method.type != 'reward'",
             lambda sp, t: sp == 1 or str(t) != "reward"),
        Rule(("training.sequenceParallelSize", "dataset.maxLength"),
             "training.sequenceParallelSize must divide dataset.maxLength",
             "!has(self.training) || !has(self.training.sequenceParallelSize) || !has(self.dataset) || "
             "!has(self.dataset.maxLength) || self.dataset.maxLength % self.training.sequenceParallelSize == 0",
             lambda sp, n: n % sp == 0),
        Rule(("training.deepspeed", "training.sequenceParallelSize"),
             "sequence parallelism needs a DeepSpeed preset (training.deepspeed other than none)",
             "!has(self.training) || !has(self.training.sequenceParallelSize) || "
             "self.training.sequenceParallelSize == 1 || "
             "(has(self.training.deepspeed) && self.training.deepspeed != 'none')",
             lambda ds, sp: sp == 1 or ds != "none"),
        Rule(("training.batchSize", "dataset.varlenAttention"),
             "varlenAttention needs training.batchSize: 1 (packed sequences already fill a batch)",
             "!has(self.dataset) || !has(self.dataset.varlenAttention) || !self.dataset.varlenAttention || "
             "!has(self.training) || !has(self.training.batchSize) || self.training.batchSize == 1",
             lambda bs, varlen: not varlen or bs == 1),
        Rule(("training.sequenceParallelSize", "resources.gpusPerNode", "resources.nodes"),
             "nodes x gpusPerNode must be a multiple of training.sequenceParallelSize",
             "!has(self.training) || !has(self.training.sequenceParallelSize) || "
             "self.training.sequenceParallelSize == 1 || !has(self.resources) || "
             "(self.resources.nodes * self.resources.gpusPerNode) % self.training.sequenceParallelSize == 0",
             lambda sp, gpus, nodes: sp == 1 or (nodes * gpus) % sp == 0),
        Rule(("export.merge", "method.type", "method.parameters"),
             "export.merge needs method type lora or qlora (or parameters lora/qlora)",
             "!has(self.export) || !has(self.export.merge) || !self.export.merge || !has(self.method) || "
             "!has(self.method.type) || (self.method.type != 'full' && !(has(self.method.parameters) && "
             "self.method.parameters == 'full'))",
             lambda merge, t, p: not merge or (t != "full" and p != "full")),
        Rule(("dataset.format", "model.vision"),
             "dataset.format llava needs model.vision (the image encoder and projector), and model.vision needs "
             "dataset.format llava",
             "has(self.baseConfig) || ((has(self.dataset) && has(self.dataset.format) && self.dataset.format in "
             f"{list(LLAVA_FORMATS)}) == (has(self.model) && has(self.model.vision)))",
             lambda fmt, vision: (str(fmt) in LLAVA_FORMATS) == (vision is not None)),
        Rule(("method.vision", "model.vision"), "method.vision needs model.vision",
             "!has(self.method) || !has(self.method.vision) || (has(self.model) && has(self.model.vision))",
             lambda m, v: m is None or v is not None),
        Rule(("export.merge", "model.vision"),
             "export.merge is not available for LLaVA: export the adapters (or a ConvertJob with saveFormat "
             "huggingface, which merges them)",
             "!has(self.export) || !has(self.export.merge) || !self.export.merge || !has(self.model) || "
             "!has(self.model.vision)", lambda merge, v: not merge or v is None),
        Rule(("training.sequenceParallelSize", "model.vision"), "sequence parallelism is not available for LLaVA",
             "!has(self.training) || !has(self.training.sequenceParallelSize) || "
             "self.training.sequenceParallelSize == 1 || !has(self.model) || !has(self.model.vision)",
             lambda sp, v: sp == 1 or v is None),
        Rule(("training.deepspeed", "model.vision"),
             "LLaVA cannot use ZeRO-3 (the image encoder is loaded whole); use zero1 or zero2",
             "!has(self.training) || !has(self.training.deepspeed) || !self.training.deepspeed.startsWith('zero3') "
             "|| !has(self.model) || !has(self.model.vision)",
             lambda ds, v: v is None or not str(ds).startswith("zero3")),
        Rule(("model",), "model is required unless baseConfig names a predefined config",
             "has(self.baseConfig) || (has(self.model) && has(self.model.uri))",
             lambda model: model is not None),
        Rule(("dataset",), "dataset is required unless baseConfig names a predefined config",
             "has(self.baseConfig) || (has(self.dataset) && has(self.dataset.uri))",
             lambda dataset: dataset is not None),
    )

    base_config: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=253)] | None = None
    """A predefined config (`kubetune list-cfg`) that the fields set here override."""
    model: Annotated[ModelSpec, Field(json_schema_extra=RECIPE | unchangeable(
        "spec.model cannot change: the job's checkpoints were trained from it; create a new FineTuneJob"))] = None  # type: ignore[assignment]
    """The base model. Cannot change once created (its checkpoints are of this model)."""
    method: Annotated[MethodSpec, Field(json_schema_extra=RECIPE | unchangeable(
        "spec.method cannot change: the job's checkpoints hold what this method trains; create a new "
        "FineTuneJob"))] = Field(default_factory=MethodSpec)
    """full, lora or qlora, with adapter and quantization settings. Cannot change once created."""
    dataset: Annotated[DatasetSpec, Field(json_schema_extra=RECIPE)] = None  # type: ignore[assignment]
    """Training data, template and packing. Changes reach a running job at its next attempt."""
    training: Annotated[TrainingSpec, Field(json_schema_extra=RECIPE)] = Field(default_factory=TrainingSpec)
    """Optimisation loop. Changes reach a running job at its next attempt."""
    checkpoints: Annotated[CheckpointSpec, Field(json_schema_extra=RECIPE)] = Field(default_factory=CheckpointSpec)
    """Checkpoint interval, retention and location. Changes reach a running job at its next attempt."""
    evaluation: Annotated[EvaluationSpec, Field(json_schema_extra=RECIPE)] = Field(default_factory=EvaluationSpec)
    """Sample generations during training. Changes reach a running job at its next attempt."""
    resources: FineTuneResources = Field(default_factory=FineTuneResources)
    """Pods, GPUs and placement. Changes reach a running job at its next attempt (a restart, or suspend and
    resume), as for dataset, training, checkpoints and evaluation; when the running Job cannot take one, the job says
    so meanwhile (condition SpecApplied=False)."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Credentials and endpoint for s3:// and hf:// URIs."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Suspension, restarts, deadlines, Kueue."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """Artifacts written after success."""


class FineTuneJob(KubeModel):
    """A fine-tuning run: model, method, data, training loop, checkpoints and where it runs."""

    api_version: Literal["kubetune.io/v1alpha1"] = API_VERSION
    """`kubetune.io/v1alpha1`."""
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    """`FineTuneJob`."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: FineTuneJobSpec
    """Desired state."""
    status: FineTuneJobStatus | None = None
    """Observed state."""
