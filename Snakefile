# Image-captioning pipeline: demo/COCO data -> text prep -> grid + region features -> SAT and M² training
# -> beam search -> pycocoevalcap scores -> results tables. One rule file per stage under workflow/rules/.
import sys

from snakemake.utils import min_version, validate

from pipeline.config import schema
from pipeline.config_files import PlanError, deep_merge, resolve_extends, schema_problem, typed_overrides
from pipeline.errors import InputError

min_version("9.0")


# A --configfile given on the command line replaces the default instead of being merged into it
# (merging would, e.g., add the demo's models to a COCO run). Every config file is complete, or extends one that is.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# A config file may extend another (extends: config/coco.yaml), and --config 'evaluate={beam_size: 3}' sets nested
# keys with their YAML types: both resolved here, then the merged whole is validated (pipeline/config_files.py)
CONFIG_SOURCE = (workflow.overwrite_configfiles or ["config/config.yaml"])[-1]
try:
    merged_config, EXTENDS_CHAIN = resolve_extends(dict(config), CONFIG_SOURCE)
except InputError as problem:  # a file of the chain missing, not YAML, or extending itself: one line
    sys.exit(f"error: {problem}")
config.clear()
config.update(deep_merge(merged_config, typed_overrides(dict(workflow.config_settings.config or {}))))


# one line naming the key at fault (Snakemake's own message dumps the schema); then Snakemake's check fills the defaults
PlanError.config_file = CONFIG_SOURCE  # what the rule files' planning errors name
config_problem = schema_problem(config, schema())
if config_problem:
    raise PlanError(config_problem)
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
