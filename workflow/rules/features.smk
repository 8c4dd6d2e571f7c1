# Stage 1: grid features (Show-Attend-Tell), region features (M²) and the grids of named timm backbones
# (features.backbones, read by either model) into chunked stores. Every GPU job (here, train, decode) starts through
# pipeline/gpu_slots.py: GPU ids of its own, as many as its `gpu` resource, so --resources gpu=N runs N jobs on N
# cards (a no-op without GPUs and under SLURM).
# With features.shards = N > 1 each kind is extracted by N independent jobs (one GPU each, e.g. N SLURM
# jobs at once) over disjoint slices of the images, then merged into the single store training reads.
from features.config import PretrainSpec

SHARDS = config["features"]["shards"]
# the sources (kinds: grid, regions, features.backbones names) whose full store is extracted in one go (or in
# shards); the others join an earlier scored part
EXTRACTED_KINDS = "|".join(k for k in FEATURE_SOURCES if k not in COMPLETED_KINDS) or "(?!)"


wildcard_constraints:
    kind="|".join(FEATURE_SOURCES),
    shard=r"\d+",


rule pretrain_backbone:
    # only when features.grid/regions.weights is "pretrain": the offline stand-in for ImageNet weights
    input:
        manifest=MANIFEST,
        boxes=BOXES_JSON or [],
        images=IMAGE_INPUTS,
    output:
        trunk=PRETRAINED_TRUNK,
        report=PRETRAINED_TRUNK.removesuffix(".pt") + ".json",
    log:
        f"{LOGS}/pretrain_backbone.log",
    benchmark:
        f"{BENCHMARKS}/pretrain_backbone.tsv"
    conda:
        "../../envs/features.yaml"
    threads: config["features"]["threads"]
    resources:
        gpu=1,
    params:
        spec=spec_json(PretrainSpec, config),
        image_root=lambda wildcards: IMAGE_ROOT,
        code=code("features.pretrain"),
    shell:
        "python -m pipeline.gpu_slots --count {resources.gpu} -- python -m features job pretrain --spec {params.spec:q} --manifest {input.manifest} --boxes {input.boxes}"
        " --image-root {params.image_root} --out {output.trunk} --report {output.report} --threads {threads} 2> {log}"


rule extract_features:
    input:
        unpack(extract_inputs("dataset")),
    output:
        store_output("{kind}") if SHARDS == 1 else shard_path("{kind}", "{shard}"),
    log:
        f"{LOGS}/extract_features/{{kind}}.log" if SHARDS == 1 else f"{LOGS}/extract_features/{{kind}}.{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/extract_features/{{kind}}.tsv"
        if SHARDS == 1
        else f"{BENCHMARKS}/extract_features/{{kind}}.{{shard}}.tsv"
    # one job per kind, or per kind and shard when features.shards > 1 (then merge_features joins them)
    wildcard_constraints:
        kind=EXTRACTED_KINDS,
    priority: 50  # every training job waits for the stores: before anything else that is ready
    conda:
        "../../envs/features.yaml"
    threads: config["features"]["threads"]
    resources:
        gpu=1,
    params:
        args=lambda wc: extract_args(wc.kind, "dataset"),
        shard=lambda wc: wc.get("shard", 0),
        shards=SHARDS,
        code=lambda wc: extract_code(wc.kind),
    shell:
        "python -m pipeline.gpu_slots --count {resources.gpu} -- python -m features job extract --manifest {input.manifest} --out {output}"
        " {params.args} --shard {params.shard} --num-shards {params.shards} --threads {threads} 2> {log}"


if SHARDS > 1:

    rule merge_features:
        input:
            lambda wc: [shard_path(wc.kind, i) for i in range(SHARDS)],
        output:
            store_output("{kind}"),
        log:
            f"{LOGS}/merge_features/{{kind}}.log",
        benchmark:
            f"{BENCHMARKS}/merge_features/{{kind}}.tsv"
        wildcard_constraints:
            kind=EXTRACTED_KINDS,
        conda:
            "../../envs/features.yaml"
        params:
            code=code("features.store.merge"),
        shell:
            "python -m features job merge --out {output} {input} 2> {log}"


use rule extract_features as extract_set_features with:
    # the images of an evaluation-only set (nocaps, evaluate.sets) or of a part of the dataset (the scored splits,
    # the rest: PART_MANIFEST) through the same extractors
    input:
        unpack(extract_inputs()),
    output:
        store_output("{kind}", "{image_set}"),
    log:
        f"{LOGS}/extract_features/{{image_set}}_{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/extract_features/{{image_set}}_{{kind}}.tsv"
    wildcard_constraints:
        image_set="|".join(["scored", *EVALUATION_ONLY_SETS]),
        kind="|".join(FEATURE_SOURCES),
    priority: 0  # the training stores first
    params:
        args=lambda wc: extract_args(wc.kind, wc.image_set),
        shard=0,
        shards=1,
        code=lambda wc: extract_code(wc.kind),


use rule extract_set_features as extract_rest_features with:
    # the images an earlier scored part lacks, for complete_features: temp, as once joined the full store holds them
    input:
        unpack(extract_inputs("rest")),
    output:
        temp(store_output("{kind}", "rest")),
    log:
        f"{LOGS}/extract_features/rest_{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/extract_features/rest_{{kind}}.tsv"
    wildcard_constraints:
        kind="|".join(COMPLETED_KINDS) or "(?!)",
    priority: 50  # every training job waits for the full store
    params:
        args=lambda wc: extract_args(wc.kind, "rest"),
        shard=0,
        shards=1,
        code=lambda wc: extract_code(wc.kind),


rule complete_features:
    # a full store from the scored part an earlier evaluation-only run extracted and the rest of the images: no
    # image is extracted twice (a copy of the scored rows: a few % of the store)
    input:
        scored=store_path("{kind}", "scored"),
        rest=store_path("{kind}", "rest"),
    output:
        store_output("{kind}"),
    log:
        f"{LOGS}/complete_features/{{kind}}.log",
    benchmark:
        f"{BENCHMARKS}/complete_features/{{kind}}.tsv"
    wildcard_constraints:
        kind="|".join(COMPLETED_KINDS) or "(?!)",
    conda:
        "../../envs/features.yaml"
    params:
        code=code("features.store.merge"),
    shell:
        "python -m features job merge --out {output} {input.scored} {input.rest} 2> {log}"
