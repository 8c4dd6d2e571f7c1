# evaluate.sets: further evaluation sets, each a config entry (a Karpathy-format JSON and its image folder). A set's
# split becomes text/sets/<name>.json and a manifest; its images go through the run's extractors (rule
# extract_set_features), every trained model decodes and scores it (rules decode and score, split <name>), and
# tables/sets.* lists them all.
from captioner.evaluation.specs import SetTablesSpec

SET_TABLES = [f"{RUN}/tables/sets.csv", f"{RUN}/tables/sets.md"]


rule prepare_eval_set:
    input:
        lambda wildcards: EVAL_SETS[wildcards.eval_set]["karpathy_json"],
    output:
        captions=EVAL_SET_CAPTIONS,
        manifest=EVAL_SET_MANIFEST,
    log:
        f"{LOGS}/prepare_eval_set/{{eval_set}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare_eval_set/{{eval_set}}.tsv"
    wildcard_constraints:
        eval_set="|".join(EVAL_SETS),
    conda:
        "../../envs/data.yaml"
    params:
        split=lambda wildcards: EVAL_SETS[wildcards.eval_set]["split"],
        image_root=lambda wildcards: IMAGE_SETS[wildcards.eval_set]["image_root"],
        code=code("captioner.data.eval_set"),
    shell:
        "python -m captioner job prepare-eval-set --karpathy-json {input} --name {wildcards.eval_set}"
        " --split {params.split} --captions {output.captions} --manifest {output.manifest}"
        " --image-root {params.image_root} 2> {log}"


rule set_tables:
    input:
        [path for name in EVAL_SETS for path in per_seed(f"scores_{name}.json")],
    output:
        csv=report(
            SET_TABLES[0],
            caption="../report/sets.rst",
            category="Results",
            labels={"table": "evaluation sets (CSV)"},
        ),
        md=report(
            SET_TABLES[1],
            caption="../report/sets.rst",
            category="Results",
            labels={"table": "evaluation sets"},
        ),
    log:
        f"{LOGS}/set_tables.log",
    benchmark:
        f"{BENCHMARKS}/set_tables.tsv"
    conda:
        "../../envs/evaluate.yaml"
    params:
        spec=spec_json(SetTablesSpec, config),
        title=f"Evaluation sets: {config['run']}",
        code=code("captioner.evaluation.set_tables"),
    shell:
        "python -m captioner job set-tables --spec {params.spec:q} --scores {input} --out-csv {output.csv}"
        " --out-md {output.md} --title {params.title:q} 2> {log}"
