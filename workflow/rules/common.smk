# Shared paths and helpers. Jobs run the project code that sits beside this workflow (PYTHONPATH),
# and each rule's params carry a fingerprint of that code (pitfall P5: Snakemake cannot see imports).
import json
import shlex
from pathlib import Path

from captioner.models.registry import ModelName, model_module, objective_module
from features.config import extractor_module
from pipeline.provenance import code_hash

PROJECT_ROOT = Path(workflow.basedir)
# (braces doubled: snakemake formats the prefix like a shell command)
shell.prefix("export PYTHONPATH=" + str(PROJECT_ROOT) + "${{PYTHONPATH:+:$PYTHONPATH}}; ")

RUN = f"results/{config['run']}"
LOGS = f"{RUN}/logs"
DEMO = config["dataset"]["source"] == "demo"
STORE_SUFFIX = {"hdf5": ".h5", "zarr": ".zarr"}[config["features"]["format"]]
MODELS = list(config["models"])
SPLIT = config["evaluate"]["split"]  # the split of the results tables
EXTRA_SPLITS = [s for s in config["evaluate"]["extra_splits"] if s != SPLIT]  # decoded and scored too
TABLES = [
    f"{RUN}/tables/scores.csv",
    f"{RUN}/tables/scores.md",
    f"{RUN}/tables/samples.md",
]

# dataset.download: COCO and Karpathy's splits are fetched into dataset.root by workflow/rules/download.smk
DOWNLOAD = not DEMO and config["dataset"]["download"]
DATA_ROOT = config["dataset"]["root"]
WEIGHTS_ROOT = config["dataset"]["weights_root"]
COCO_FOLDERS = ["train2014", "val2014"]  # the top folders of COCO's zips, and the Karpathy JSON's "filepath"
# SHA-256 pins of downloads without a published checksum, beside the config file (config/coco.lock.json)
CONFIG_FILE = Path((workflow.overwrite_configfiles or ["config/config.yaml"])[-1])
LOCK_FILE = str(CONFIG_FILE.with_name(f"{CONFIG_FILE.stem}.lock.json"))

if DEMO:
    KARPATHY_JSON = f"{RUN}/dataset/dataset_coco.json"
    IMAGE_ROOT = f"{RUN}/dataset"
    BOXES_JSON = f"{RUN}/dataset/boxes.json"
    IMAGE_INPUTS = [f"{RUN}/dataset/images"]
elif DOWNLOAD:
    given = [key for key in ("karpathy_json", "image_root") if key in config["dataset"]]
    if given:
        raise ValueError(
            f"dataset.download is true, so the data goes to dataset.root ({DATA_ROOT}); remove "
            f"dataset.{given[0]}, or set dataset.download: false to use your own copies"
        )
    KARPATHY_JSON = f"{DATA_ROOT}/dataset_coco.json"
    IMAGE_ROOT = DATA_ROOT
    BOXES_JSON = config["features"]["regions"].get("boxes_json", "")
    IMAGE_INPUTS = [f"{DATA_ROOT}/{folder}" for folder in COCO_FOLDERS]
else:
    KARPATHY_JSON = config["dataset"]["karpathy_json"]
    IMAGE_ROOT = config["dataset"]["image_root"]
    BOXES_JSON = config["features"]["regions"].get("boxes_json", "")
    IMAGE_INPUTS = []  # the user's image root: a fixed external folder (not tracked file by file)


def code(*modules):
    return code_hash(PROJECT_ROOT, *modules)


def store_output(kind):
    path = store_path(kind)
    return directory(path) if STORE_SUFFIX == ".zarr" else path


def store_path(kind):
    return f"{RUN}/features/{kind}{STORE_SUFFIX}"


def model_name(model):
    return ModelName.parse(model)


def family(model):
    return model_name(model).family


def features_kind(model):
    """The feature store a model reads (registry): grid or regions."""
    return model_name(model).features


def deep_merge(base, override):
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def hparams(model):
    """Family defaults, then the base model's overrides, then the blind variant's own (blind = same recipe)."""
    base = model.removesuffix("_blind")
    merged = deep_merge(config[family(model)], config["models"].get(base) or {})
    if model != base:
        merged = deep_merge(merged, config["models"].get(model) or {})
    return merged


def train_gpus(model):
    """GPUs of one training job: train.gpus_per_job, one number for every model or one per family."""
    gpus = config["train"]["gpus_per_job"]
    return gpus if isinstance(gpus, int) else gpus[family(model)]


def train_launcher(model):
    """What runs `captioner train`: plain Python, or torchrun with one process per GPU (data parallel)."""
    gpus = train_gpus(model)
    if gpus == 1:
        return "python -m"
    key = "scst_batch_images" if model_name(model).objective == "scst" else "batch_size"
    batch = hparams(model).get(key)
    if batch is not None and batch % gpus:  # fail while planning, not when the job starts on the cluster
        raise ValueError(
            f"{model}: {key} {batch} is the global batch and must be divisible by the {gpus} GPUs "
            "of train.gpus_per_job"
        )
    return f"torchrun --standalone --nproc-per-node {gpus} -m"


def parent_dir(name):
    """params helper: the folder of one of the rule's outputs (the CLI writes several files there)."""
    return lambda wildcards, output: str(Path(output[name]).parent)


PRETRAINED_TRUNK = f"{RUN}/features/backbone.pt"
PRETRAIN = config["features"]["pretrain"]  # defaults filled by the schema


def torchvision_weights_name(weights):
    """torchvision names its weights in capitals (IMAGENET1K_V1, DEFAULT); paths and none/pretrain are not."""
    return weights.isupper() and weights.replace("_", "").isalnum() and not Path(weights).exists()


def weights_path(kind):
    """`weights: pretrain` means the trunk trained by rule pretrain_backbone; with dataset.download a torchvision
    name means the file rule torchvision_weights fetched; anything else is passed on."""
    weights = config["features"][kind]["weights"]
    if DOWNLOAD and torchvision_weights_name(weights):
        return f"{WEIGHTS_ROOT}/{config['features'][kind]['backbone']}-{weights}.pth"
    if weights != "pretrain":
        return weights
    if config["features"][kind]["backbone"] != PRETRAIN["backbone"]:
        raise ValueError(
            f"features.{kind}.weights is 'pretrain' but features.{kind}.backbone "
            f"({config['features'][kind]['backbone']}) differs from features.pretrain.backbone "
            f"({PRETRAIN['backbone']})"
        )
    if not BOXES_JSON:
        raise ValueError(
            "features.*.weights 'pretrain' needs labelled boxes: the demo dataset, or "
            "features.regions.boxes_json with a 'labels' list per image"
        )
    return PRETRAINED_TRUNK


MANIFEST = f"{RUN}/text/images.json"


def fetched_weights(kind):
    """The weights file of this kind that a rule produces (pretrain, download), or None."""
    weights = config["features"][kind]["weights"]
    if weights == "pretrain" or (DOWNLOAD and torchvision_weights_name(weights)):
        return weights_path(kind)
    if kind == "regions" and DOWNLOAD and detector_weights_url():
        return weights
    return None


def detector_weights_url():
    regions = config["features"]["regions"]
    return regions["weights_url"] if regions["boxes"] == "detector" else ""


def extract_inputs(wildcards):
    inputs = {"manifest": MANIFEST, "images": IMAGE_INPUTS}
    if wildcards.kind == "regions" and config["features"]["regions"]["boxes"] == "given":
        inputs["boxes"] = BOXES_JSON
    if fetched_weights(wildcards.kind):
        inputs["weights"] = fetched_weights(wildcards.kind)
    return inputs


def extract_args(kind):
    """Command-line arguments of `python -m features extract` for one kind, from the config."""
    f = config["features"]
    k = f[kind]
    args = (
        f"--image-root {IMAGE_ROOT} --backbone {k['backbone']} --weights {shlex.quote(weights_path(kind))}"
        f" --seed {k['seed']}"
        f" --batch-size {f['batch_size']} --num-workers {f['num_workers']} --device {f['device']}"
        f" --dtype {f['dtype']} --on-error {f['on_error']}"
    )
    if f["compression"] != "none":
        args += f" --compression {f['compression']}"
    if kind == "grid":
        return args + f" --image-size {k['image_size']} --grid-size {k['grid_size']}"
    args += f" --min-size {k['min_size']} --max-size {k['max_size']} --max-boxes {k['max_boxes']}"
    args += f" --precision {k['precision']}"
    if k["boxes"] == "given":
        return args + f" --boxes {BOXES_JSON}"
    keys = ("min_boxes", "conf_thresh", "nms_thresh", "pre_nms_top_n", "post_nms_top_n")
    detector = {key: k[key] for key in keys}  # defaults filled by the schema
    if k["backend"] == "detectron2":
        detector.update(backend="detectron2", detectron2_config=shlex.quote(k["detectron2_config"]))
    options = "".join(f" --{key.replace('_', '-')} {value}" for key, value in detector.items())
    return f"{args} --box-source detector{options}"


def extract_code(kind):
    """The extraction loop and the one extractor module this kind runs (not the other kinds')."""
    return code(
        "features.extract",
        extractor_module(kind, config["features"]["regions"]["boxes"]),
    )


def shard_path(kind, shard):
    return f"{RUN}/features/shards/{kind}.{shard}-of-{config['features']['shards']}{STORE_SUFFIX}"


def train_inputs(wildcards):
    inputs = {
        "features": store_path(features_kind(wildcards.model)),
        "captions": f"{RUN}/text/captions.json",
        "vocab": f"{RUN}/text/vocab.json",
    }
    parent = model_name(wildcards.model).init_from
    if parent:
        inputs["init"] = f"{RUN}/models/{parent}/checkpoint.pt"
    return inputs


def attention_inputs(wildcards):
    inputs = {
        "checkpoint": f"{RUN}/models/{wildcards.model}/checkpoint.pt",
        "features": store_path("grid"),
        "captions": f"{RUN}/text/captions.json",
    }
    inputs["images"] = IMAGE_INPUTS
    return inputs


def attention_outputs():
    """The attention figures of every sighted model that attends over grid cells (blind models attend to nothing)."""
    count = config["evaluate"]["attention_maps"]
    sat_models = [m for m in MODELS if model_name(m).spec.attention_maps and not model_name(m).blind]
    return [f"{RUN}/eval/{m}/attention/{i:02d}.png" for m in sat_models for i in range(count)]


def json_arg(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def models_and_parents(models):
    """The configured models and those they start from (m2_scst needs m2_xe's best weights)."""
    needed = set()
    for model in models:
        while model:
            needed.add(model)
            model = model_name(model).init_from
    return sorted(needed)


BUILDABLE_MODELS = models_and_parents(MODELS)


def extra_split_scores():
    return [f"{RUN}/eval/{m}/scores_{s}.json" for m in MODELS for s in EXTRA_SPLITS]


wildcard_constraints:
    model="|".join(BUILDABLE_MODELS),
    split="val|test",


# dataset.download (workflow/rules/download.smk)
SOURCES = config["dataset"]["sources"]
KEEP_ZIPS = config["dataset"]["keep_zips"]
ZIP_DIR = f"{DATA_ROOT}/zips"


def fetch_zip_command(source, zip_path):
    """Download and verify one zip; the space check counts the zip twice (the zip, then what is unpacked)."""
    s = SOURCES[source]
    return (
        f"python -m captioner download --url {shlex.quote(s['url'])} --out {zip_path} --size {s['size']}"
        f" --sha256 {s['sha256']} --extra-space {s['size']}"
    )


def drop_zip(zip_path):
    return "" if KEEP_ZIPS else f" && rm -f {zip_path}"
