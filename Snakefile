# Image-captioning pipeline: demo/COCO data -> text prep -> grid + region features -> SAT and M² training
# -> beam search -> pycocoevalcap scores -> results tables. One rule file per stage under workflow/rules/.
from snakemake.utils import min_version, validate

min_version("9.0")


# A --configfile given on the command line replaces the default instead of being merged into it
# (merging would, e.g., add the demo's models to a COCO run). Every config file is complete.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


if FETCH:

    include: "workflow/rules/download.smk"


include: "workflow/rules/backbones.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"


if RELEASED_MODELS:

    include: "workflow/rules/releases.smk"


include: "workflow/rules/evaluate.smk"


if NOCAPS_ON:

    include: "workflow/rules/nocaps.smk"


if EVAL_SETS:

    include: "workflow/rules/eval_sets.smk"


include: "workflow/rules/costs.smk"


rule all:
    input:
        RESULTS,
        COSTS,
