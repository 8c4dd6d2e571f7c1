# Stage 0: the dataset (generated demo, or the user's Karpathy COCO files), the image manifest the feature stage
# reads, and text preparation. The manifest and the text are separate jobs: editing the caption code never
# re-extracts features.
from captioner.data.specs import DemoDataSpec, TextSpec

if DEMO:

    rule demo_data:
        output:
            json=KARPATHY_JSON,
            boxes=BOXES_JSON,
            images=directory(f"{RUN}/dataset/images"),
        log:
            f"{LOGS}/demo_data.log",
        benchmark:
            f"{BENCHMARKS}/demo_data.tsv"
        conda:
            "../../envs/data.yaml"
        params:
            spec=spec_json(DemoDataSpec, config),
            out_dir=parent_dir("json"),
            code=code("captioner.data.demo"),
        shell:
            "python -m captioner job demo-data --spec {params.spec:q} --out {params.out_dir} 2> {log}"


rule image_manifest:
    input:
        KARPATHY_JSON,
    output:
        MANIFEST,
    log:
        f"{LOGS}/image_manifest.log",
    benchmark:
        f"{BENCHMARKS}/image_manifest.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        code=code("captioner.data.manifest"),
    shell:
        "python -m captioner job image-manifest --karpathy-json {input} --out {output} 2> {log}"


rule prepare_text:
    input:
        KARPATHY_JSON,
    output:
        vocab=f"{RUN}/text/vocab.json",
        captions=f"{RUN}/text/captions.json",
    log:
        f"{LOGS}/prepare_text.log",
    benchmark:
        f"{BENCHMARKS}/prepare_text.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        spec=spec_json(TextSpec, config),
        code=code("captioner.data.text"),
    shell:
        "python -m captioner job prepare-text --spec {params.spec:q} --karpathy-json {input} --vocab {output.vocab}"
        " --captions {output.captions} 2> {log}"


rule manifest_part:
    # the images of the scored splits (evaluate.split + extra_splits), or all the others: an evaluation-only run
    # extracts the first part alone, a later training run the rest (IMAGE_SETS "scored", "rest")
    input:
        MANIFEST,
    output:
        PART_MANIFEST,
    log:
        f"{LOGS}/manifest_part/{{part}}.log",
    benchmark:
        f"{BENCHMARKS}/manifest_part/{{part}}.tsv"
    wildcard_constraints:
        part="scored|rest",
    conda:
        "../../envs/data.yaml"
    params:
        splits=" ".join(SCORED_SPLITS),
        exclude=lambda wc: " --exclude" if wc.part == "rest" else "",
        code=code("captioner.data.split_manifest"),
    shell:
        "python -m captioner job split-manifest --manifest {input} --splits {params.splits}{params.exclude}"
        " --out {output} 2> {log}"
