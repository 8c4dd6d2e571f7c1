# Released weights as models (models.<name>: {release: <id>}, facts in captioner/models/releases.py; every release so
# far is M²'s, so the importers are M²'s): their files are downloaded and verified, the checkpoint imported as ours;
# then the same decode, score and tables jobs as a trained model's. No train job, and no training-split features
# unless something else trains.


localrules:
    release_file,


rule release_file:
    # one released file: the published SHA-256 and size where there are any, else the first download's digest pinned
    # in LOCK_FILE and checked from then on (a copy placed at this path by hand is used as it is)
    output:
        f"{WEIGHTS_ROOT}/releases/{{release}}/{{file}}",
    log:
        f"{WEIGHTS_ROOT}/logs/releases/{{release}}/{{file}}.log",
    benchmark:
        f"{BENCHMARKS}/download/releases/{{release}}.{{file}}.tsv"
    wildcard_constraints:
        release="|".join(RELEASE_IDS),
        file="|".join(RELEASE_FILE_NAMES),
    conda:
        "../../envs/download.yaml"
    params:
        fetch=lambda wc, output: release_download_command(wc.release, wc.file, output[0]),
    shell:
        "{params.fetch} 2>&1 | tee {log} >&2"


rule import_release:
    # the released checkpoint + vocabulary as our checkpoint (the job checks that they belong together)
    input:
        checkpoint=lambda wc: release_file(model_name(wc.model).release, "checkpoint"),
        vocab=lambda wc: release_file(model_name(wc.model).release, "vocab"),
    output:
        checkpoint=f"{MODEL_DIR}/checkpoint.pt",
    log:
        f"{LOGS}/import_release/{{model}}.seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/import_release/{{model}}.seed{{seed}}.tsv"
    wildcard_constraints:
        model="|".join(RELEASED_MODELS),
        seed="0",
    conda:
        "../../envs/train.yaml"
    params:
        release=lambda wc: model_name(wc.model).release,
        code=code("captioner.apps.import_m2_weights"),
    shell:
        "python -m captioner job import-m2-weights {input.checkpoint} {input.vocab} {output.checkpoint}"
        " --name {wildcards.model} --release {params.release} 2> {log}"


rule import_release_features:
    # the authors' own features of the scored images (models with features: release), read into our store format
    input:
        source=lambda wc: release_file(wc.release, "features"),
        manifest=PART_MANIFEST.format(part="scored"),
    output:
        store_output("{release}", "scored"),
    log:
        f"{LOGS}/import_release_features/{{release}}.log",
    benchmark:
        f"{BENCHMARKS}/import_release_features/{{release}}.tsv"
    wildcard_constraints:
        release="|".join(RELEASE_IDS),
    conda:
        "../../envs/features.yaml"
    params:
        max_boxes=lambda wc: release_facts(wc.release).max_boxes,
        dtype=config["features"]["dtype"],
        code=code("features.import_m2_features"),
    shell:
        "python -m features job import-m2-features {input.source} --manifest {input.manifest} --out {output}"
        " --max-boxes {params.max_boxes} --dtype {params.dtype} 2> {log}"
