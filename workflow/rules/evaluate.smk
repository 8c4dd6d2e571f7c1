# Stage 3: beam-search the evaluation split, score with pycocoevalcap, write the results tables.

EVALUATE = config["evaluate"]


rule decode:
    input:
        checkpoint=f"{RUN}/models/{{model}}/checkpoint.pt",
        features=lambda wc: store_path(features_kind(wc.model)),
        captions=f"{RUN}/text/captions.json",
    output:
        predictions=f"{RUN}/eval/{{model}}/predictions_{{split}}.json",
        beams=f"{RUN}/eval/{{model}}/predictions_{{split}}_beams.json",
    log:
        f"{LOGS}/decode/{{model}}.{{split}}.log",
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
        predictions=f"{RUN}/eval/{{model}}/predictions_{{split}}.json",
        beams=f"{RUN}/eval/{{model}}/predictions_{{split}}_beams.json",
        captions=f"{RUN}/text/captions.json",
    output:
        f"{RUN}/eval/{{model}}/scores_{{split}}.json",
    log:
        f"{LOGS}/score/{{model}}.{{split}}.log",
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
                f"{RUN}/eval/{{model}}/attention/{i:02d}.png",
                caption="../report/attention.rst",
                category="Attention",
                labels={"model": "{model}", "image": f"{i:02d}"},
            )
            for i in range(EVALUATE["attention_maps"])
        ],
    log:
        f"{LOGS}/attention_maps/{{model}}.log",
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
        scores=expand(f"{RUN}/eval/{{model}}/scores_{SPLIT}.json", model=MODELS),
        predictions=expand(f"{RUN}/eval/{{model}}/predictions_{SPLIT}.json", model=MODELS),
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
    conda:
        "../../envs/evaluate.yaml"
    params:
        title=f"Results: {config['run']}",
        split=SPLIT,
        published="--published" if EVALUATE["published_rows"] else "",
        code=code("captioner.evaluation.tables"),
    shell:
        "python -m captioner tables --scores {input.scores} --predictions {input.predictions}"
        " --captions {input.captions} --split {params.split} {params.published} --out-csv {output.csv}"
        " --out-md {output.md} --out-samples {output.samples} --title {params.title:q} 2> {log}"
