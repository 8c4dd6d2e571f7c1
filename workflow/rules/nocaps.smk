# nocaps (evaluate.nocaps): an evaluation-only set of novel-object images. Its images go through the same extractors
# as the training images into their own stores, every trained model decodes them (rule decode, split "nocaps"), and
# the validation split is scored per domain (in / near / out / entire) into tables/nocaps.*; the test split ends in
# each model's predictions_nocaps.json, the EvalAI submission file.
from captioner.data.specs import DemoNocapsSpec, NocapsImagesSpec, NocapsSpec
from captioner.evaluation.specs import ScoreSpec

if NOCAPS["source"] == "demo":

    rule demo_nocaps:
        # the demo's nocaps-like set: out-of-domain images hold only shapes and colours no training image has
        output:
            json=NOCAPS_JSON,
            boxes=IMAGE_SETS["nocaps"]["boxes"],
            images=directory(IMAGE_SETS["nocaps"]["image_root"]),
        log:
            f"{LOGS}/demo_nocaps.log",
        benchmark:
            f"{BENCHMARKS}/demo_nocaps.tsv"
        conda:
            "../../envs/data.yaml"
        params:
            spec=spec_json(DemoNocapsSpec, config),
            out_dir=parent_dir("json"),
            code=code("captioner.data.demo_nocaps"),
        shell:
            "python -m captioner job demo-nocaps --spec {params.spec:q} --out {params.out_dir} 2> {log}"


if NOCAPS["source"] == "download":

    localrules:
        nocaps_json,
        nocaps_images,

    rule nocaps_json:
        # no checksum is published: the first download's SHA-256 is pinned in LOCK_FILE and checked from then on
        output:
            NOCAPS_JSON,
        log:
            f"{NOCAPS['root']}/logs/nocaps_{NOCAPS_SPLIT}_json.log",
        benchmark:
            f"{BENCHMARKS}/download/nocaps_{NOCAPS_SPLIT}_json.tsv"
        conda:
            "../../envs/download.yaml"
        params:
            url=shlex.quote(NOCAPS["url"]),
            lock=LOCK_FILE,
        shell:
            "python -m captioner download --url {params.url} --out {output} --lock {params.lock}"
            " 2>&1 | tee {log} >&2"

    rule nocaps_images:
        # every image from its coco_url, a bounded number at once; the ones that failed are listed
        input:
            NOCAPS_JSON,
        output:
            directory(IMAGE_SETS["nocaps"]["image_root"]),
        log:
            f"{NOCAPS['root']}/logs/nocaps_{NOCAPS_SPLIT}_images.log",
        benchmark:
            f"{BENCHMARKS}/download/nocaps_{NOCAPS_SPLIT}_images.tsv"
        conda:
            "../../envs/download.yaml"
        params:
            failures=f"{NOCAPS['root']}/nocaps_{NOCAPS_SPLIT}_failures.json",
            spec=spec_json(NocapsImagesSpec, config),
        shell:
            "python -m captioner job nocaps-images --spec {params.spec:q} --nocaps-json {input} --out {output}"
            " --failures {params.failures} 2>&1 | tee {log} >&2"


rule prepare_nocaps:
    input:
        json=NOCAPS_JSON,
        images=IMAGE_SETS["nocaps"]["images"],
    output:
        captions=IMAGE_SETS["nocaps"]["captions"],
        manifest=IMAGE_SETS["nocaps"]["manifest"],
    log:
        f"{LOGS}/prepare_nocaps.log",
    benchmark:
        f"{BENCHMARKS}/prepare_nocaps.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        spec=spec_json(NocapsSpec, config),
        image_root=lambda wildcards: IMAGE_SETS["nocaps"]["image_root"],
        code=code("captioner.data.nocaps"),
    shell:
        "python -m captioner job prepare-nocaps --spec {params.spec:q} --nocaps-json {input.json}"
        " --captions {output.captions} --manifest {output.manifest} --image-root {params.image_root} 2> {log}"


if NOCAPS_SPLIT == "val":

    rule score_nocaps:
        input:
            predictions=f"{EVAL_DIR}/predictions_nocaps.json",
            beams=f"{EVAL_DIR}/predictions_nocaps_beams.json",
            nocaps=IMAGE_SETS["nocaps"]["captions"],
        output:
            f"{EVAL_DIR}/scores_nocaps.json",
        log:
            f"{LOGS}/score/{{model}}.seed{{seed}}.nocaps.log",
        benchmark:
            f"{BENCHMARKS}/score/{{model}}.seed{{seed}}.nocaps.tsv"
        conda:
            "../../envs/evaluate.yaml"
        params:
            spec=spec_json(ScoreSpec, config),
            code=code("captioner.evaluation.nocaps_scoring"),
        shell:
            "python -m captioner job score-nocaps --spec {params.spec:q} --predictions {input.predictions}"
            " --beams {input.beams} --nocaps {input.nocaps} --out {output} 2> {log}"

    rule nocaps_tables:
        input:
            per_seed("scores_nocaps.json"),
        output:
            csv=report(
                NOCAPS_TABLES[0],
                caption="../report/nocaps.rst",
                category="Results",
                labels={"table": "nocaps (CSV)"},
            ),
            md=report(
                NOCAPS_TABLES[1],
                caption="../report/nocaps.rst",
                category="Results",
                labels={"table": "nocaps"},
            ),
        log:
            f"{LOGS}/nocaps_tables.log",
        benchmark:
            f"{BENCHMARKS}/nocaps_tables.tsv"
        conda:
            "../../envs/evaluate.yaml"
        params:
            title=f"nocaps: {config['run']}",
            published="--published" if EVALUATE["published_rows"] else "",
            code=code("captioner.evaluation.nocaps_tables"),
        shell:
            "python -m captioner job nocaps-tables --scores {input} {params.published} --out-csv {output.csv}"
            " --out-md {output.md} --title {params.title:q} 2> {log}"
