# Stage 3: beam-search the evaluation split, score with pycocoevalcap, write the results tables.

EVALUATE = config["evaluate"]


rule decode:
    input:
        checkpoint=f"{MODEL_DIR}/checkpoint.pt",
        features=decode_features,
        captions=decode_captions,
    output:
        predictions=f"{EVAL_DIR}/predictions_{{split}}.json",
        beams=f"{EVAL_DIR}/predictions_{{split}}_beams.json",
    log:
        f"{LOGS}/decode/{{model}}.seed{{seed}}.{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/decode/{{model}}.seed{{seed}}.{{split}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=1,
    params:
        beam_size=EVALUATE["beam_size"],
        max_length=EVALUATE["max_length"],
        batch_size=EVALUATE["batch_size"],
        length_norm=EVALUATE["length_normalization"],
        device=config["train"]["device"],
        code=lambda wc: code("captioner.evaluation.decode", model_module(wc.model)),
    shell:
        "python -m captioner decode --checkpoint {input.checkpoint} --features {input.features}"
        " --captions {input.captions} --split {wildcards.split} --beam-size {params.beam_size}"
        " --max-length {params.max_length} --batch-size {params.batch_size} --out {output.predictions}"
        " --beams-out {output.beams} --length-normalization {params.length_norm}"
        " --threads {threads} --device {params.device} 2> {log}"


rule score:
    input:
        predictions=f"{EVAL_DIR}/predictions_{{split}}.json",
        beams=f"{EVAL_DIR}/predictions_{{split}}_beams.json",
        captions=f"{RUN}/text/captions.json",
    output:
        f"{EVAL_DIR}/scores_{{split}}.json",
    log:
        f"{LOGS}/score/{{model}}.seed{{seed}}.{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/score/{{model}}.seed{{seed}}.{{split}}.tsv"
    wildcard_constraints:
        split="val|test",  # nocaps is scored per domain (rule score_nocaps)
    conda:
        "../../envs/evaluate.yaml"
    params:
        metrics=",".join(EVALUATE["metrics"]),
        code=code("captioner.evaluation.scoring"),
    shell:
        "python -m captioner score --predictions {input.predictions} --beams {input.beams}"
        " --captions {input.captions} --split {wildcards.split} --metrics {params.metrics} --out {output} 2> {log}"


rule attention_maps:
    input:
        unpack(attention_inputs),
    output:
        [
            report(
                f"{EVAL_DIR}/attention/{i:02d}.png",
                caption="../report/attention.rst",
                category="Attention",
                labels={"model": "{model}", "image": f"{i:02d}"},
            )
            for i in range(EVALUATE["attention_maps"])
        ],
    log:
        f"{LOGS}/attention_maps/{{model}}.seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/attention_maps/{{model}}.seed{{seed}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["train"]["threads"]
    params:
        split=SPLIT,
        root=lambda wildcards: IMAGE_ROOT,
        beam_size=EVALUATE["beam_size"],
        max_length=EVALUATE["max_length"],
        code=lambda wc: code("captioner.evaluation.attention_maps", model_module(wc.model)),
    shell:
        "python -m captioner attention-maps --checkpoint {input.checkpoint} --features {input.features}"
        " --captions {input.captions} --image-root {params.root} --split {params.split}"
        " --beam-size {params.beam_size} --max-length {params.max_length} --threads {threads}"
        " --out {output} 2> {log}"


rule tables:
    input:
        scores=per_seed(f"scores_{SPLIT}.json"),
        predictions=first_seed(f"predictions_{SPLIT}.json"),
        captions=f"{RUN}/text/captions.json",
    output:
        csv=report(
            TABLES[0],
            caption="../report/scores.rst",
            category="Results",
            labels={"table": "scores (CSV)"},
        ),
        md=report(
            TABLES[1],
            caption="../report/scores.rst",
            category="Results",
            labels={"table": "scores"},
        ),
        samples=report(
            TABLES[2],
            caption="../report/samples.rst",
            category="Results",
            labels={"table": "sample captions"},
        ),
    log:
        f"{LOGS}/tables.log",
    benchmark:
        f"{BENCHMARKS}/tables.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        title=f"Results: {config['run']}",
        split=SPLIT,
        published="--published" if EVALUATE["published_rows"] else "",
        bootstrap=EVALUATE["bootstrap"],
        code=code("captioner.evaluation.tables"),
    shell:
        "python -m captioner tables --scores {input.scores} --predictions {input.predictions}"
        " --captions {input.captions} --split {params.split} {params.published} --out-csv {output.csv}"
        " --out-md {output.md} --out-samples {output.samples} --title {params.title:q}"
        " --resamples {params.bootstrap[resamples]} --confidence {params.bootstrap[confidence]}"
        " --bootstrap-seed {params.bootstrap[seed]} 2> {log}"


rule significance:
    input:
        per_seed(f"scores_{SPLIT}.json"),
    output:
        md=report(
            f"{RUN}/tables/significance.md",
            caption="../report/significance.rst",
            category="Results",
            labels={"table": "significance"},
        ),
        json=f"{RUN}/tables/significance.json",
    log:
        f"{LOGS}/significance.log",
    benchmark:
        f"{BENCHMARKS}/significance.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        pairs=" ".join(f"{a}:{b}" for a, b in SIGNIFICANCE_PAIRS),
        trials=EVALUATE["significance"]["trials"],
        bootstrap=EVALUATE["bootstrap"],
        code=code("captioner.evaluation.significance"),
    shell:
        "python -m captioner significance --scores {input} --pairs {params.pairs} --out-md {output.md}"
        " --out-json {output.json} --trials {params.trials} --resamples {params.bootstrap[resamples]}"
        " --confidence {params.bootstrap[confidence]} --seed {params.bootstrap[seed]} 2> {log}"
