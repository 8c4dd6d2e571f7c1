# Last: what every job of the run cost (its benchmark file), per stage and per model, in GPU-hours where it holds GPUs.
# (This rule has no benchmark file of its own: it reads the folder while it runs.)


COSTS = [f"{RUN}/tables/costs.md", f"{RUN}/tables/costs.csv"]
# every other output of the run (rule all's): once they exist, all its jobs and their benchmark files are done
RESULTS = [TABLES, SIGNIFICANCE, attention_outputs(), extra_split_scores(), nocaps_outputs()]
if EVAL_SETS:
    RESULTS.append(SET_TABLES)


rule costs:
    input:
        RESULTS,
    output:
        md=report(
            COSTS[0],
            caption="../report/costs.rst",
            category="Costs",
            labels={"table": "costs"},
        ),
        csv=report(
            COSTS[1],
            caption="../report/costs.rst",
            category="Costs",
            labels={"table": "costs (CSV)"},
        ),
    log:
        f"{LOGS}/costs.log",
    conda:
        "../../envs/evaluate.yaml"
    params:
        benchmarks=BENCHMARKS,
        logs=LOGS,
        # the download rules log beside the data they fetch (shared by runs)
        download_logs=lambda wc: " ".join(
            [f"{DATA_ROOT}/logs", f"{WEIGHTS_ROOT}/logs"] + ([f"{NOCAPS['root']}/logs"] if "root" in NOCAPS else [])
        ),
        models=",".join(MODELS),
        gpus=lambda wc: compact_json(gpus_held()),
        title=f"Costs: {config['run']}",
        code=code("captioner.evaluation.costs"),
    shell:
        "python -m captioner job costs --benchmarks {params.benchmarks} --logs {params.logs}"
        " --download-logs {params.download_logs} --models {params.models}"
        " --gpus {params.gpus:q} --out-md {output.md} --out-csv {output.csv} --title {params.title:q} 2> {log}"
