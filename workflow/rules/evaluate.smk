# Stage 3: beam-search the evaluation split, score with pycocoevalcap, write the results tables.
from captioner.evaluation.specs import AttentionSpec, DecodeSpec, ScoreSpec, SignificanceSpec, TablesSpec

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
        spec=spec_json(DecodeSpec, config),
        code=lambda wc: code("captioner.evaluation.decode", model_module(wc.model)),
    shell:
        "python -m pipeline.gpu_slots --count {resources.gpu} -- python -m captioner job decode --spec {params.spec:q} --checkpoint {input.checkpoint}"
        " --features {input.features} --captions {input.captions} --split {wildcards.split}"
        " --out {output.predictions} --beams-out {output.beams} --threads {threads} 2> {log}"


rule score:
    input:
        predictions=f"{EVAL_DIR}/predictions_{{split}}.json",
        beams=f"{EVAL_DIR}/predictions_{{split}}_beams.json",
        captions=decode_captions,
    output:
        f"{EVAL_DIR}/scores_{{split}}.json",
    log:
        f"{LOGS}/score/{{model}}.seed{{seed}}.{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/score/{{model}}.seed{{seed}}.{{split}}.tsv"
    wildcard_constraints:
        split="|".join(["val", "test", *EVAL_SETS]),  # nocaps is scored per domain (rule score_nocaps)
    conda:
        "../../envs/evaluate.yaml"
    params:
        spec=spec_json(ScoreSpec, config),
        code=code("captioner.evaluation.scoring"),
    shell:
        "python -m captioner job score --spec {params.spec:q} --predictions {input.predictions} --beams {input.beams}"
        " --captions {input.captions} --split {wildcards.split} --out {output} 2> {log}"


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
        spec=spec_json(AttentionSpec, config),
        root=lambda wildcards: IMAGE_SETS[SPLIT_IMAGE_SET[SPLIT]]["image_root"],
        code=lambda wc: code("captioner.evaluation.attention_maps", model_module(wc.model)),
    shell:
        "python -m captioner job attention-maps --spec {params.spec:q} --checkpoint {input.checkpoint}"
        " --features {input.features} --captions {input.captions} --image-root {params.root}"
        " --threads {threads} --out {output} 2> {log}"


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
        spec=spec_json(TablesSpec, config),
        title=f"Results: {config['run']}",
        released=released_tables_arg(),
        experiments=experiment_tables_arg(),
        code=code("captioner.evaluation.tables"),
    shell:
        "python -m captioner job tables --spec {params.spec:q} --scores {input.scores}"
        " --predictions {input.predictions} --captions {input.captions} --out-csv {output.csv}"
        " --out-md {output.md} --out-samples {output.samples} --title {params.title:q}{params.released}"
        "{params.experiments} 2> {log}"


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
        spec=spec_json(SignificanceSpec, config, pairs=[list(pair) for pair in SIGNIFICANCE_PAIRS]),
        code=code("captioner.evaluation.significance"),
    shell:
        "python -m captioner job significance --spec {params.spec:q} --scores {input} --out-md {output.md}"
        " --out-json {output.json} 2> {log}"
