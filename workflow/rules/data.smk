# Stage 0: the dataset (generated demo, or the user's Karpathy COCO files), the image manifest the feature stage
# reads, and text preparation. The manifest and the text are separate jobs: editing the caption code never
# re-extracts features.


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
            demo=config["dataset"]["demo"],
            out_dir=parent_dir("json"),
            code=code("captioner.data.demo"),
        shell:
            "python -m captioner job demo-data --out {params.out_dir} --seed {params.demo[seed]}"
            " --num-train {params.demo[num_train]} --num-val {params.demo[num_val]}"
            " --num-test {params.demo[num_test]} --num-restval {params.demo[num_restval]}"
            " --image-size {params.demo[image_size]} 2> {log}"


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
        min_word_count=config["text"]["min_word_count"],
        max_caption_length=config["text"]["max_caption_length"],
        code=code("captioner.data.text"),
    shell:
        "python -m captioner job prepare-text --karpathy-json {input} --vocab {output.vocab}"
        " --captions {output.captions} --min-word-count {params.min_word_count}"
        " --max-caption-length {params.max_caption_length} 2> {log}"
