# Stage 1: grid features (Show-Attend-Tell) and region features (M²) into chunked stores.
# With features.shards = N > 1 each kind is extracted by N independent jobs (one GPU each, e.g. N SLURM
# jobs at once) over disjoint slices of the images, then merged into the single store training reads.

SHARDS = config["features"]["shards"]


wildcard_constraints:
    kind="grid|regions",
    shard=r"\d+",



rule pretrain_backbone:
    # only when features.grid/regions.weights is "pretrain": the offline stand-in for ImageNet weights
    input:
        json=KARPATHY_JSON,
        boxes=BOXES_JSON or [],
        images=f"{RUN}/dataset/images" if DEMO else [],
    output:
        trunk=PRETRAINED_TRUNK,
        report=PRETRAINED_TRUNK.removesuffix(".pt") + ".json",
    params:
        args=" ".join(f"--{key.replace('_', '-')} {value}" for key, value in sorted(PRETRAIN.items()))
        + f" --image-root {IMAGE_ROOT} --device {config['features']['device']}",
        code=code("features.pretrain"),
    threads: config["features"]["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/pretrain_backbone.log",
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m features pretrain --karpathy-json {input.json} --boxes {input.boxes} --out {output.trunk}"
        " {params.args} --threads {threads} 2> {log}"


if SHARDS == 1:

    rule extract_features:
        input:
            unpack(extract_inputs),
        output:
            store_output("{kind}"),
        params:
            args=lambda wc: extract_args(wc.kind),
            code=code("features.extract"),
        threads: config["features"]["threads"]
        resources:
            gpu=1,
        log:
            f"{LOGS}/extract_features/{{kind}}.log",
        conda:
            "../../envs/features.yaml"
        shell:
            "python -m features extract --kind {wildcards.kind} --karpathy-json {input.json} --out {output}"
            " {params.args} --threads {threads} 2> {log}"

else:

    rule extract_features:
        input:
            unpack(extract_inputs),
        output:
            shard_path("{kind}", "{shard}"),
        params:
            args=lambda wc: extract_args(wc.kind),
            shards=SHARDS,
            code=code("features.extract"),
        threads: config["features"]["threads"]
        resources:
            gpu=1,
        log:
            f"{LOGS}/extract_features/{{kind}}.{{shard}}.log",
        conda:
            "../../envs/features.yaml"
        shell:
            "python -m features extract --kind {wildcards.kind} --karpathy-json {input.json} --out {output}"
            " {params.args} --shard {wildcards.shard} --num-shards {params.shards} --threads {threads} 2> {log}"

    rule merge_features:
        input:
            lambda wc: [shard_path(wc.kind, i) for i in range(SHARDS)],
        output:
            store_output("{kind}"),
        params:
            code=code("features.store"),
        log:
            f"{LOGS}/merge_features/{{kind}}.log",
        conda:
            "../../envs/features.yaml"
        shell:
            "python -m features merge --out {output} {input} 2> {log}"
