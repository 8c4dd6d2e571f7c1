# Stage 2: train every configured model on the cached features (its features source: models.<name>.features). m2_scst
# continues from m2_xe's best weights (a named experiment: from its init_from).


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{MODEL_DIR}/checkpoint.pt",
        metrics=f"{MODEL_DIR}/metrics.csv",
        curve=report(
            f"{MODEL_DIR}/curve.png",
            caption="../report/curve.rst",
            category="Training curves",
            labels={"model": "{model}", "seed": "{seed}"},
        ),
    log:
        f"{LOGS}/train/{{model}}.seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{model}}.seed{{seed}}.tsv"
    wildcard_constraints:
        model="|".join(TRAINED_MODELS) or "(?!)",  # released weights are imported (rule import_release)
    priority: lambda wc: train_priority(wc.model)
    conda:
        "../../envs/train.yaml"
    threads: config["train"]["threads"]
    resources:
        gpu=lambda wc: train_gpus(wc.model),
        # a resource, not a param: how often last.pt is written does not change the result (no rerun)
        checkpoint_minutes=config["train"]["checkpoint_minutes"],
    params:
        hparams=lambda wc: compact_json(seed_hparams(wc.model, wc.seed)),
        init=lambda wc, input: f"--init {input.init}" if "init" in input.keys() else "",
        out_dir=parent_dir("checkpoint"),
        device=config["train"]["device"],
        code=lambda wc: code(
            "captioner.training.trainer", model_module(wc.model), model_name(wc.model).objective_module
        ),
        recipe=lambda wc: f" --recipe {recipe_of(wc.model)}" if recipe_of(wc.model) != wc.model else "",
        launch=lambda wc: train_launcher(wc.model),
    shell:
        "python -m pipeline.gpu_slots --count {resources.gpu} -- {params.launch} captioner job train --model {wildcards.model}{params.recipe} --features {input.features}"
        " --captions {input.captions} --vocab {input.vocab} --hparams {params.hparams:q} {params.init}"
        " --out-dir {params.out_dir} --checkpoint {output.checkpoint} --metrics {output.metrics}"
        " --curve {output.curve} --threads {threads} --device {params.device}"
        " --checkpoint-minutes {resources.checkpoint_minutes} 2> {log}"
