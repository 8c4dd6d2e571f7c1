# Shared paths and helpers. Jobs run the project code that sits beside this workflow (PYTHONPATH),
# and each rule's params carry a fingerprint of that code (pitfall P5: Snakemake cannot see imports).
import re
import shlex
from pathlib import Path

from captioner.evaluation.significance import default_pairs
from captioner.models.registry import ENTRY_KEYS, ModelName
from captioner.models.releases import FILES as RELEASE_FILES, ReleasedModel, release as release_facts
from features.config import ExtractSpec, extractor_module, pretrain_mismatch
from pipeline.config_files import deep_merge
from pipeline.errors import InputError
from pipeline.spec import compact_json, to_json as spec_json
from pipeline.provenance import code_fingerprint

PROJECT_ROOT = Path(workflow.basedir)
# (braces doubled: snakemake formats the prefix like a shell command)
# CAPTIONER_USAGE: each command logs its peak memory and CPU time (pipeline/usage.py), which tables/costs.md reads.
# A prefix replaces Snakemake's bash strict mode, so it is restated: without pipefail `download ... | tee log` ends 0
# when the download fails
shell.prefix(
    "set -euo pipefail; export PYTHONPATH=" + str(PROJECT_ROOT) + "${{PYTHONPATH:+:$PYTHONPATH}} CAPTIONER_USAGE=1; "
)

RUN = f"results/{config['run']}"
LOGS = f"{RUN}/logs"
# one benchmark file per job (wall and CPU seconds, max RSS): rule costs sums them into tables/costs.md
BENCHMARKS = f"{RUN}/benchmarks"
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


def karpathy_dataset(archives, image_folder, obtain, scored_archives=None):
    """One of Karpathy's datasets: its image archives ({dataset.sources key: the folder each unpacks to under
    dataset.root}), the folder its JSON's image paths start in ("": COCO's paths carry their folder), where
    its images come from (for the error when they are absent), and the archives holding its val and test images
    (None: all; an evaluation-only run fetches only those)."""
    return dict(locals(), scored_archives=scored_archives or list(archives))


# Datasets as data: which of them a run uses is dataset.name; their JSON is dataset_<name>.json in Karpathy's zip
DATASETS = {
    # (Karpathy's val and test images are all COCO val2014 images)
    "coco": karpathy_dataset(
        {"train2014": "train2014", "val2014": "val2014"}, "", "http://images.cocodataset.org", ["val2014"]
    ),
    "flickr8k": karpathy_dataset(
        {"flickr8k_images": "Flicker8k_Dataset"},  # (sic: the zip's folder)
        "Flicker8k_Dataset",
        "Flickr8k_Dataset.zip (dataset.sources.flickr8k_images.url)",
    ),
    "flickr30k": karpathy_dataset(
        {"flickr30k_images": "flickr30k-images"},
        "flickr30k-images",
        "the request form at http://hockenmaier.cs.illinois.edu/DenotationGraph/ (31,783 JPEGs)",
    ),
}
DATASET_NAME = config["dataset"]["name"]
DATASET = DATASETS[DATASET_NAME]
# What is public is fetched: with download: true everything; with download: false and no karpathy_json given,
# everything but the images (your copy, image_root): Karpathy's JSON and the weights the config names
FETCH = not DEMO and (DOWNLOAD or "karpathy_json" not in config["dataset"])
# SHA-256 pins of downloads without a published checksum, beside the config file (config/coco.lock.json); a file that
# extends others shares the pins of the first of its chain (an experiment on COCO: config/coco.lock.json)
CONFIG_FILE = Path(EXTENDS_CHAIN[0] if EXTENDS_CHAIN else CONFIG_SOURCE)
LOCK_FILE = str(CONFIG_FILE.with_name(f"{CONFIG_FILE.stem}.lock.json"))
# dataset.lock_file, spelled as the default is (absolute where the config's path is): configs that share a lock file
# then fetch with the same command, so switching between them refetches nothing
if config["dataset"]["lock_file"]:
    given = Path(config["dataset"]["lock_file"])
    LOCK_FILE = str(given.absolute() if CONFIG_FILE.is_absolute() else given)

if DEMO:
    KARPATHY_JSON = f"{RUN}/dataset/dataset_coco.json"
    IMAGE_ROOT = f"{RUN}/dataset"
    BOXES_JSON = f"{RUN}/dataset/boxes.json"
    IMAGE_INPUTS = [f"{RUN}/dataset/images"]
elif DOWNLOAD:
    given = [key for key in ("karpathy_json", "image_root") if key in config["dataset"]]
    if given:
        raise PlanError(
            f"dataset.download is true, so the data goes to dataset.root ({DATA_ROOT}); remove "
            f"dataset.{given[0]}, or set dataset.download: false to use your own copies"
        )
    KARPATHY_JSON = f"{DATA_ROOT}/dataset_{DATASET_NAME}.json"
    IMAGE_ROOT = f"{DATA_ROOT}/{DATASET['image_folder']}".rstrip("/")
    BOXES_JSON = config["features"]["regions"].get("boxes_json", "")
    IMAGE_INPUTS = [f"{DATA_ROOT}/{folder}" for folder in DATASET["archives"].values()]
    SCORED_IMAGE_INPUTS = [f"{DATA_ROOT}/{DATASET['archives'][key]}" for key in DATASET["scored_archives"]]
    for key, folder in DATASET["archives"].items():  # no public copy (Flickr30k): placed by hand
        if not config["dataset"]["sources"][key].get("url") and not Path(DATA_ROOT, folder).is_dir():
            raise PlanError(
                f"{DATA_ROOT}/{folder}: {DATASET_NAME}'s images are not there and have no download URL; get them "
                f"from {DATASET['obtain']} and unpack them as {DATA_ROOT}/{folder}/, or set "
                f"dataset.sources.{key}.url (and sha256) to a copy you trust"
            )
else:
    KARPATHY_JSON = config["dataset"].get("karpathy_json") or f"{DATA_ROOT}/dataset_{DATASET_NAME}.json"
    IMAGE_ROOT = config["dataset"]["image_root"]
    BOXES_JSON = config["features"]["regions"].get("boxes_json", "")
    IMAGE_INPUTS = []  # the user's image root: a fixed external folder (not tracked file by file)
    if not Path(IMAGE_ROOT).is_dir():
        fetchable = all(config["dataset"]["sources"][key].get("url") for key in DATASET["archives"])
        raise PlanError(
            f"dataset.image_root {IMAGE_ROOT} is not a folder: {DATASET_NAME}'s images come from {DATASET['obtain']}; "
            "put them there (where the JSON's file names are)"
            + (", or set dataset.download: true to fetch them" if fetchable else "")
        )


def code(*modules):
    """The code fingerprint param of a rule running these modules (pipeline/provenance.py)."""
    return code_fingerprint(PROJECT_ROOT, *modules)


def store_output(kind, image_set="dataset"):
    path = store_path(kind, image_set)
    return directory(path) if STORE_SUFFIX == ".zarr" else path


def store_path(kind, image_set="dataset"):
    """The store of one kind of features of an image set (IMAGE_SETS; also a wildcard): an evaluation-only set's
    stores carry its name."""
    prefix = "" if image_set == "dataset" else f"{image_set}_"
    return f"{RUN}/features/{prefix}{kind}{STORE_SUFFIX}"


def model_entry(model):
    """The config's entry of a model ({} for one only built as another's start, e.g. m2_xe for m2_scst)."""
    return config["models"].get(model) or {}


def sighted_entry(model):
    """The entry of a blind twin's sighted model (m2_xe_clip for m2_xe_clip_blind), {} for a sighted model."""
    sighted = model.removesuffix("_blind")
    return model_entry(sighted) if sighted != model else {}


def recipe_of(model):
    """The registered model whose recipe a model trains with: a named experiment's base (its blind twin: the base's
    blind), else the model's own name."""
    if "base" in model_entry(model):
        return model_entry(model)["base"]
    if "base" in sighted_entry(model):
        return sighted_entry(model)["base"].removesuffix("_blind") + "_blind"
    return model


def model_name(model):
    """The registry's view of a model name (family, variant, blind, the model it starts from); released weights:
    captioner/models/releases.py's."""
    release = model_entry(model).get("release")
    if release:
        return ReleasedModel.parse(model, release)
    recipe = recipe_of(model)
    try:
        return ModelName.parse(model, recipe if recipe != model else None)
    except InputError as error:
        hint = "" if recipe != model else "; a named experiment of one of them gives base: (e.g. base: sat_soft)"
        raise PlanError(f"models.{model}: {error}{hint}") from None


def is_released(model):
    return "release" in model_entry(model)


def model_module(model):
    """The module of the model's family (its jobs' code fingerprints name it)."""
    return model_name(model).spec.module


def release_of(model):
    """The release a released-weights model imports (captioner/models/releases.py, with config releases.<id>)."""
    return configured_release(model_name(model).release)


def reads_release_features(model):
    """models.<name>.features: release: the model reads the authors' own features, imported (not ours)."""
    return model_entry(model).get("features", "extracted") == "release"


def family(model):
    return model_name(model).family


def features_kind(model):
    """The form of a model's inputs (registry): grid or regions."""
    return model_name(model).features


BACKBONES = config["features"]["backbones"]  # named grid sources from timm (features/timm_grid.py)
FEATURE_SOURCES = ["grid", "regions", *BACKBONES]


def features_source(model):
    """The store a model trains on and is decoded from: models.<name>.features (a blind twin: its sighted model's),
    else its family's kind; grid, regions or a features.backbones name."""
    if is_released(model):
        return features_kind(model)
    return model_entry(model).get("features") or sighted_entry(model).get("features") or features_kind(model)


def source_kind(source):
    """The kind of store a feature source writes: a timm backbone's is a grid."""
    return "grid" if source in BACKBONES else source


def extractor_kind(source):
    """The extractor a feature source runs (features/config.py's spec kinds): grid, regions or timm."""
    return "timm" if source in BACKBONES else source


def parent_of(model):
    """The model whose best weights a model starts from (m2_scst: m2_xe), or None: models.<name>.init_from (a blind
    twin: its sighted model's, blind), else its recipe's."""
    name = model_name(model)
    if is_released(model) or not name.init_from:
        return None
    if "init_from" in model_entry(model):
        parent = model_entry(model)["init_from"]
    elif "init_from" in sighted_entry(model):
        parent = sighted_entry(model)["init_from"].removesuffix("_blind") + "_blind"
    else:
        return name.init_from
    if parent not in config["models"] and recipe_of(parent) == parent:
        try:
            ModelName.parse(parent)
        except InputError:
            raise PlanError(
                f"models.{model}.init_from: {parent} is neither a model of the config nor a registered one"
            ) from None
    return parent


def hparams(model):
    """Family defaults, then (a named experiment) its base model's overrides where that model is configured, then
    the model's own, then the blind twin's own (blind = same recipe); a model entry's own keys (ENTRY_KEYS) are not
    recipe keys."""
    sighted = model.removesuffix("_blind")
    layers = [config[family(model)]]
    base = model_entry(sighted).get("base")
    if base and base != sighted:
        layers.append(model_entry(base))
    layers.append(model_entry(sighted))
    if model != sighted:
        layers.append(model_entry(model))
    merged = {}
    for layer in layers:
        merged = deep_merge(merged, {k: v for k, v in layer.items() if k not in ENTRY_KEYS or k == "seeds"})
    return merged


# Training seeds (a DAG dimension): models/<model>/seed<k>/ and eval/<model>/seed<k>/ per seed
MODEL_DIR = f"{RUN}/models/{{model}}/seed{{seed}}"
EVAL_DIR = f"{RUN}/eval/{{model}}/seed{{seed}}"


def seeds_of(model):
    """models.<model>.seeds (a blind variant: its base model's), else train.seeds, else the recipe's own seed;
    released weights: one checkpoint, seed0."""
    if is_released(model):
        return [0]
    for name in (model, model.removesuffix("_blind")):
        seeds = (config["models"].get(name) or {}).get("seeds")
        if seeds:
            return seeds
    return config["train"].get("seeds") or [hparams(model)["seed"]]


# recipe keys added after runs existed, with the value those runs had: they join a job's recipe only when set to
# something else, so adding them retrains nothing
ADDED_RECIPE_KEYS = {"optimizer": "adam"}


def seed_hparams(model, seed):
    """The recipe of one seed's training job: the seed list becomes that job's seed; train.ema_decay joins it when
    set (a setting of every model that changes what they learn)."""
    recipe = {
        key: value
        for key, value in hparams(model).items()
        if key != "seeds" and ADDED_RECIPE_KEYS.get(key, object()) != value
    }
    ema = {"ema_decay": config["train"]["ema_decay"]} if config["train"]["ema_decay"] else {}
    return {**recipe, "seed": int(seed), **ema}


def eval_dir(model, seed):
    return f"{RUN}/eval/{model}/seed{seed}"


def per_seed(name):
    """``name`` (e.g. scores_test.json) of every configured model and each of its seeds."""
    return [f"{eval_dir(m, k)}/{name}" for m in MODELS for k in seeds_of(m)]


def first_seed(name):
    """``name`` of every configured model's first seed (sample captions, attention figures)."""
    return [f"{eval_dir(m, seeds_of(m)[0])}/{name}" for m in MODELS]


def train_gpus(model):
    """GPUs of one training job: train.gpus_per_job, one number for every model or one per family."""
    gpus = config["train"]["gpus_per_job"]
    return gpus if isinstance(gpus, int) else gpus[family(model)]


def train_priority(model):
    """Longest first, so the last job to finish is not a long one started late: the sighted models (and m2_xe,
    which m2_scst waits for) before the blind baselines, which early stopping ends sooner."""
    return 1 if model_name(model).blind else 2


def train_launcher(model):
    """What runs `captioner job train`: plain Python, or torchrun with one process per GPU (data parallel)."""
    gpus = train_gpus(model)
    if gpus == 1:
        return "python -m"
    key = model_name(model).batch_key
    batch = hparams(model).get(key)
    if batch is not None and batch % gpus:  # fail while planning, not when the job starts on the cluster
        raise PlanError(
            f"{model}: {key} {batch} is the global batch and must be divisible by the {gpus} GPUs "
            "of train.gpus_per_job"
        )
    # torchrun whose agent leaves SIGTERM/SIGUSR1 to the workers (captioner/training/launch.py); not part of the
    # code fingerprint: how the processes start does not change what they compute
    return f"python -m captioner.training.launch --standalone --nproc-per-node {gpus} -m"


def parent_dir(name):
    """params helper: the folder of one of the rule's outputs (the CLI writes several files there)."""
    return lambda wildcards, output: str(Path(output[name]).parent)


PRETRAINED_TRUNK = f"{RUN}/features/backbone.pt"
PRETRAIN = config["features"]["pretrain"]  # defaults filled by the schema


def torchvision_weights_name(weights):
    """torchvision names its weights in capitals (IMAGENET1K_V1, DEFAULT); paths and none/pretrain are not."""
    return weights.isupper() and weights.replace("_", "").isalnum() and not Path(weights).exists()


def timm_weights_url(source):
    """Where a backbone's weights: hub come from (features.backbones.<name>.weights_url, else the tag's file on the
    Hugging Face hub, the file timm itself would fetch)."""
    entry = BACKBONES[source]
    return entry["weights_url"] or f"https://huggingface.co/timm/{entry['model']}/resolve/main/model.safetensors"


def weights_path(kind):
    """`weights: pretrain` means the trunk trained by rule pretrain_backbone; a torchvision name the file rule
    torchvision_weights fetches (offline: one placed there by hand); a backbone's hub the file rule timm_weights
    fetches (or one placed there); anything else is passed on."""
    if kind in BACKBONES:
        weights = BACKBONES[kind]["weights"]
        return f"{WEIGHTS_ROOT}/timm/{BACKBONES[kind]['model']}.safetensors" if weights == "hub" else weights
    weights = config["features"][kind]["weights"]
    if torchvision_weights_name(weights):  # fetched by rule torchvision_weights, or placed there by hand (offline)
        return f"{WEIGHTS_ROOT}/{config['features'][kind]['backbone']}-{weights}.pth"
    if weights != "pretrain":
        return weights
    mismatch = pretrain_mismatch(config["features"], kind)
    if mismatch:
        raise PlanError(mismatch)
    if not BOXES_JSON:
        raise PlanError(
            "features.*.weights 'pretrain' needs labelled boxes: the demo dataset, or "
            "features.regions.boxes_json with a 'labels' list per image"
        )
    return PRETRAINED_TRUNK


MANIFEST = f"{RUN}/text/images.json"


def weights_input(kind):
    """The weights file this kind's extraction reads, an input of its jobs (so a missing file is named while
    planning, not when the job runs): one a rule makes (pretrain, a download) or one placed by hand; None for random
    weights."""
    if kind not in BACKBONES and config["features"][kind]["weights"] == "none":
        return None
    path = weights_path(kind)
    return None if path == "none" else path


def detector_weights_url():
    regions = config["features"]["regions"]
    return regions["weights_url"] if regions["boxes"] == "detector" else ""


def extract_inputs(image_set=None):
    """The input function of an extraction job of an image set (None: the job's image_set wildcard): its manifest
    and images, its boxes (regions from given boxes), the weights a rule fetches or trains."""

    def inputs(wildcards):
        name = image_set or wildcards.image_set
        images = IMAGE_SETS[name]
        found = {"manifest": images["manifest"], "images": images["images"]}
        if wildcards.kind == "regions" and config["features"]["regions"]["boxes"] == "given":
            if not images["boxes"]:
                raise PlanError(
                    f"features.regions.boxes is 'given': {images['boxes_key']} must give the {name} images' "
                    "boxes (or use boxes: detector)"
                )
            found["boxes"] = images["boxes"]
        if weights_input(wildcards.kind):
            found["weights"] = weights_input(wildcards.kind)
        return found

    return inputs


def extract_args(kind, image_set):
    """`python -m features job extract` arguments: the spec (features and features.<kind>, weights resolved), the
    image set's folder and boxes."""
    spec = ExtractSpec.json_from_config(config, extractor_kind(kind), weights_path(kind), backbone=kind)
    args = f"--spec {shlex.quote(spec)} --image-root {IMAGE_SETS[image_set]['image_root']}"
    if kind == "regions" and config["features"]["regions"]["boxes"] == "given":
        args += f" --boxes {IMAGE_SETS[image_set]['boxes']}"
    return args


def extract_code(kind):
    """The extraction loop and the one extractor module this kind runs (not the other kinds')."""
    return code("features.extract", extractor_module(extractor_kind(kind), config["features"]["regions"]["boxes"]))


def shard_path(kind, shard):
    return f"{RUN}/features/shards/{kind}.{shard}-of-{config['features']['shards']}{STORE_SUFFIX}"


def train_inputs(wildcards):
    inputs = {
        "features": store_path(features_source(wildcards.model)),
        "captions": f"{RUN}/text/captions.json",
        "vocab": f"{RUN}/text/vocab.json",
    }
    parent = parent_of(wildcards.model)
    if parent:
        if int(wildcards.seed) not in seeds_of(parent):
            raise PlanError(
                f"{wildcards.model} seed {wildcards.seed} starts from {parent} seed {wildcards.seed}, which is not "
                f"among {parent}'s seeds {seeds_of(parent)}"
            )
        inputs["init"] = f"{RUN}/models/{parent}/seed{wildcards.seed}/checkpoint.pt"
    return inputs


def attention_inputs(wildcards):
    images = IMAGE_SETS[SPLIT_IMAGE_SET[SPLIT]]
    return {
        "checkpoint": f"{RUN}/models/{wildcards.model}/seed{wildcards.seed}/checkpoint.pt",
        "features": store_path(features_source(wildcards.model)),
        "captions": images["captions"],
        "images": images["images"],
    }


def attention_outputs():
    """The attention figures of every sighted model that attends over grid cells (blind models attend to nothing)."""
    count = config["evaluate"]["attention_maps"]
    sat_models = [m for m in MODELS if model_name(m).spec.attention_maps and not model_name(m).blind]
    return [f"{eval_dir(m, seeds_of(m)[0])}/attention/{i:02d}.png" for m in sat_models for i in range(count)]


def models_and_parents(models):
    """The configured models and those they start from (m2_scst needs m2_xe's best weights)."""
    needed = set()
    for model in models:
        while model:
            needed.add(model)
            model = parent_of(model)
    return sorted(needed)


BUILDABLE_MODELS = models_and_parents(MODELS)
# released weights are imported (workflow/rules/releases.smk), the others trained
RELEASED_MODELS = [m for m in MODELS if is_released(m)]
TRAINED_MODELS = [m for m in BUILDABLE_MODELS if not is_released(m)]
# the feature sources a training reads: the whole dataset's stores
TRAINED_SOURCES = {features_source(m) for m in TRAINED_MODELS}
SCORED_SPLITS = [SPLIT, *EXTRA_SPLITS]


def scored_part_used(source):
    """Whether the dataset's val/test images are decoded from the scored part of a source's features
    (features/scored_<source>): when nothing trained reads that source (only those images are extracted), or when an
    earlier evaluation-only run made that part (the full store is then completed from it: rule complete_features)."""
    return source not in TRAINED_SOURCES or Path(store_path(source, "scored")).exists()


# the sources whose full store joins the scored part made earlier with the rest of the images (rule complete_features)
COMPLETED_KINDS = [source for source in sorted(TRAINED_SOURCES) if scored_part_used(source)]


RELEASE_IDS = sorted({model_name(m).release for m in RELEASED_MODELS})


def configured_release(release_id):
    return release_facts(release_id, config["releases"].get(release_id))


RELEASE_FILE_NAMES = sorted({getattr(configured_release(r), f).name for r in RELEASE_IDS for f in RELEASE_FILES})


def release_file(release_id, file):
    """Where a released file is kept, under dataset.weights_root/releases/<id>/ (fetched there by rule release_file)."""
    name = getattr(configured_release(release_id), file).name
    return f"{WEIGHTS_ROOT}/releases/{release_id}/{name}"


def release_download_command(release_id, file_name, out):
    """Fetch and verify one released file: its published SHA-256 and size, else the pin in LOCK_FILE."""
    release = configured_release(release_id)
    (found,) = [getattr(release, f) for f in RELEASE_FILES if getattr(release, f).name == file_name]
    return download_command(found.url, out, found.size, found.sha256)


def release_store(release_id):
    """The store of a release's own features, imported for the scored images (rule import_release_features)."""
    return store_path(release_id, "scored")


def release_label(model):
    """How a released-weights model's rows are labelled: the release and the features it read."""
    facts = release_of(model)
    features = (
        f"the authors' {facts.features.name}" if reads_release_features(model) else "features extracted by this run"
    )
    return f"{facts.label}; {features}"


def released_tables_arg():
    """The tables job's --released: labels of released weights' rows and each release's own log ("" without any)."""
    if not RELEASED_MODELS:
        return ""
    reported = []
    for release_id in RELEASE_IDS:
        facts = configured_release(release_id)
        if DATASET_NAME == facts.features_dataset and SPLIT == "test" and not DEMO:
            reported.append([facts.reported_source, facts.reported_images, facts.reported_beam, facts.reported])
    released = {"labels": {m: release_label(m) for m in RELEASED_MODELS}, "reported": reported}
    return f" --released {shlex.quote(compact_json(released))}"


def describe_source(source):
    """A feature source in words: a backbone's timm model and input size."""
    if source not in BACKBONES:
        return source
    entry = BACKBONES[source]
    size = f", {entry['image_size']} px" if entry["image_size"] else ""
    return f"{source} ({entry['model']}{size})"


def experiment_label(model):
    """What a named experiment (or a model on other features than its family's) is: its recipe, features and the
    keys it sets; None for a plain registered model."""
    sighted = model.removesuffix("_blind")
    entry = model_entry(sighted)
    source = features_source(model)
    if "base" not in entry and source == features_kind(model):
        return None
    parts = [f"{recipe_of(model)} recipe"] if "base" in entry else []
    parts.append(f"features {describe_source(source)}")
    if "init_from" in entry:
        parts.append(f"from {parent_of(model)}")
    overrides = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    parts += [f"{key}: {compact_json(value)}" for key, value in sorted(overrides.items())]
    return "; ".join(parts)


def experiment_tables_arg():
    """The tables job's --labels (named experiments' rows) and --feature-comparison (runs on backbone grids)."""
    labels = {m: experiment_label(m) for m in MODELS if not is_released(m) and experiment_label(m)}
    arg = f" --labels {shlex.quote(compact_json(labels))}" if labels else ""
    if any(features_source(m) in BACKBONES for m in TRAINED_MODELS):
        arg += " --feature-comparison"
    return arg


def release_pairs(models):
    """Paired tests between the rows of one release (the same weights on different features)."""
    pairs, by_release = [], {}
    for model in models:
        if is_released(model):
            by_release.setdefault(model_name(model).release, []).append(model)
    for rows in by_release.values():
        pairs += [(other, rows[0]) for other in rows[1:]]
    return pairs


def experiment_pairs(models):
    """Paired tests between a named experiment and the model it varies (M² on CLIP grids against M² on regions), and
    a named second stage against its start (m2_scst_clip against m2_xe_clip)."""
    pairs = [(m, model_entry(m)["base"]) for m in models if model_entry(m).get("base") in models]
    starts = [(m, parent_of(m)) for m in models if "base" in model_entry(m) and not is_released(m)]
    return pairs + [(m, parent) for m, parent in starts if parent in models and (m, parent) not in pairs]


# paired tests (evaluate.significance.pairs, or the default pairs among the configured models)
SIGNIFICANCE_PAIRS = [tuple(p) for p in config["evaluate"]["significance"]["pairs"]] or (
    default_pairs(MODELS) + experiment_pairs(MODELS) + release_pairs(MODELS)
)
SIGNIFICANCE = [f"{RUN}/tables/significance.md", f"{RUN}/tables/significance.json"] if SIGNIFICANCE_PAIRS else []


def extra_split_scores():
    return [path for s in EXTRA_SPLITS for path in per_seed(f"scores_{s}.json")]


# nocaps (evaluate.nocaps.source): an evaluation-only set decoded by every model (workflow/rules/nocaps.smk)
NOCAPS = config["evaluate"]["nocaps"]
NOCAPS_ON = NOCAPS["source"] != "none"
NOCAPS_SPLIT = NOCAPS["split"]
NOCAPS_TABLES = [f"{RUN}/tables/nocaps.csv", f"{RUN}/tables/nocaps.md"]
if NOCAPS["source"] == "demo":
    NOCAPS_JSON = f"{RUN}/dataset/nocaps/nocaps_val_captions.json"
    nocaps_root, nocaps_boxes = f"{RUN}/dataset/nocaps/images", f"{RUN}/dataset/nocaps/boxes.json"
elif NOCAPS["source"] == "download":
    NOCAPS_JSON = f"{NOCAPS['root']}/nocaps_{NOCAPS_SPLIT}.json"
    nocaps_root, nocaps_boxes = f"{NOCAPS['root']}/{NOCAPS_SPLIT}", NOCAPS.get("boxes_json", "")
else:  # files: the user's copies (or none)
    NOCAPS_JSON = NOCAPS.get("json", "")
    nocaps_root, nocaps_boxes = NOCAPS.get("image_root", ""), NOCAPS.get("boxes_json", "")


def image_set(manifest, image_root, images, boxes, boxes_key, captions):
    """One image set: its manifest, image folder (and the inputs that track it), boxes (and the config key that
    gives them), and captions. Its feature stores: store_path."""
    return locals()


# Image sets as data: the images a feature store is extracted from and the captions it is decoded against. Both sets
# share every feature rule and helper (extract_inputs, extract_args, store_path); each split names its set.
IMAGE_SETS = {
    # the dataset's images: training and the Karpathy val/test splits
    "dataset": image_set(
        MANIFEST, IMAGE_ROOT, IMAGE_INPUTS, BOXES_JSON, "features.regions.boxes_json", f"{RUN}/text/captions.json"
    ),
    # nocaps: evaluation only (workflow/rules/nocaps.smk); a user's own folder is not tracked file by file
    "nocaps": image_set(
        f"{RUN}/text/nocaps_images.json",
        nocaps_root,
        [nocaps_root] if NOCAPS["source"] != "files" else [],
        nocaps_boxes,
        "evaluate.nocaps.boxes_json",
        f"{RUN}/text/nocaps.json",
    ),
}
# the dataset's images in two parts, by rule manifest_part. Those the tables score (SCORED_SPLITS), extracted alone
# when nothing trained needs the rest, and the rest, extracted when a later training run completes the store
PART_MANIFEST = f"{RUN}/text/{{part}}_images.json"
for part in ("scored", "rest"):
    IMAGE_SETS[part] = dict(IMAGE_SETS["dataset"], manifest=PART_MANIFEST.format(part=part))
if DOWNLOAD:  # only the archives that hold the scored images
    IMAGE_SETS["scored"]["images"] = SCORED_IMAGE_INPUTS
# evaluate.sets: further Karpathy-format evaluation sets, each a config entry (workflow/rules/eval_sets.smk)
EVAL_SETS = config["evaluate"]["sets"]
EVAL_SET_CAPTIONS = f"{RUN}/text/sets/{{eval_set}}.json"
EVAL_SET_MANIFEST = f"{RUN}/text/sets/{{eval_set}}_images.json"
for name, entry in EVAL_SETS.items():
    if name in IMAGE_SETS:
        raise PlanError(f"evaluate.sets.{name}: the name is taken by the run's own image set {name}; rename the set")
    IMAGE_SETS[name] = image_set(
        EVAL_SET_MANIFEST.format(eval_set=name),
        entry["image_root"],
        [],  # the user's folder: not tracked file by file
        entry.get("boxes_json", ""),
        f"evaluate.sets.{name}.boxes_json",
        EVAL_SET_CAPTIONS.format(eval_set=name),
    )
SPLIT_IMAGE_SET = {"val": "dataset", "test": "dataset", "nocaps": "nocaps", **{name: name for name in EVAL_SETS}}
# the evaluation-only image sets (their own stores, never trained on): rule extract_set_features
EVALUATION_ONLY_SETS = (["nocaps"] if NOCAPS_ON else []) + list(EVAL_SETS)


def nocaps_outputs():
    """What a nocaps evaluation ends in: the per-domain tables (val), or each model's EvalAI submission (test)."""
    if not NOCAPS_ON:
        return []
    if NOCAPS_SPLIT == "val":
        return NOCAPS_TABLES
    return per_seed("predictions_nocaps.json")


def decode_features(wildcards):
    """The store a model decodes a split from: the evaluation set's, or for the dataset's val/test the full store
    or its scored part (scored_part_used); the authors' own features for a model that reads them."""
    model, image_set = wildcards.model, SPLIT_IMAGE_SET[wildcards.split]
    if reads_release_features(model):
        return release_store(model_name(model).release)
    source = features_source(model)
    if image_set == "dataset" and scored_part_used(source):
        image_set = "scored"
    return store_path(source, image_set)


def decode_captions(wildcards):
    return IMAGE_SETS[SPLIT_IMAGE_SET[wildcards.split]]["captions"]


wildcard_constraints:
    model="|".join(BUILDABLE_MODELS),
    seed=r"\d+",
    split="|".join(["val", "test", *EVALUATION_ONLY_SETS]),


# dataset.download (workflow/rules/download.smk)
SOURCES = config["dataset"]["sources"]
KEEP_ZIPS = config["dataset"]["keep_zips"]
ZIP_DIR = f"{DATA_ROOT}/zips"


def download_command(url, out, size=None, sha256=None, extra_space=None):
    """`python -m captioner download` of one file: its published size and SHA-256 where there are any, else the
    SHA-256 pinned in LOCK_FILE on first download; ``extra_space``: bytes needed beside it (what it unpacks to)."""
    # (for COCO the same command as before datasets were data: a changed param would fetch 20 GB again)
    checks = f" --size {size}" if size else ""
    checks += f" --sha256 {sha256}" if sha256 else f" --lock {LOCK_FILE}"
    checks += f" --extra-space {extra_space}" if extra_space else ""
    return f"python -m captioner download --url {shlex.quote(url)} --out {out}{checks}"


def fetch_zip_command(source, zip_path):
    """Download and verify one zip; the space check counts the zip twice (the zip, then what is unpacked)."""
    s = SOURCES[source]
    return download_command(s["url"], zip_path, s.get("size"), s.get("sha256"), s.get("size"))


def drop_zip(zip_path):
    return "" if KEEP_ZIPS else f" && rm -f {zip_path}"


def gpus_held():
    """{rule: GPUs} of the rules holding a `gpu` resource; training: per model (train.gpus_per_job)."""
    held = {}
    for each in workflow.rules:
        gpus = each.resources.get("gpu")  # a snakemake Resource; training's is a function (handled below)
        if gpus is None or gpus.is_evaluable():
            continue
        if isinstance(gpus.value, int) and gpus.value > 0:
            held[each.name] = gpus.value
    held["train"] = {model: train_gpus(model) for model in MODELS}
    return held


for model in RELEASED_MODELS:  # what a released-weights model cannot do, said while planning
    facts = release_of(model)
    if reads_release_features(model):
        if DEMO and "url" not in (config["releases"].get(model_name(model).release) or {}).get("features", {}):
            raise PlanError(
                f"models.{model}.features: release means the authors' {facts.features.name} of the "
                f"{facts.features_dataset} images, not the demo's; use features: extracted (or give "
                f"releases.{model_name(model).release}.features.url, a file of the demo images' features)"
            )
        if DATASET_NAME != facts.features_dataset:
            raise PlanError(
                f"models.{model}.features: release means the authors' {facts.features.name}, which holds "
                f"{facts.features_dataset} images only (dataset.name is {DATASET_NAME}); use features: extracted"
            )
        if NOCAPS_ON or EVAL_SETS:
            raise PlanError(
                f"models.{model}.features: release: the authors' {facts.features.name} holds the "
                f"{facts.features_dataset} images only, so this model cannot be decoded on nocaps or evaluate.sets; "
                "score those with features: extracted (a second model entry) or switch them off"
            )


for model in TRAINED_MODELS:  # what a model reads and starts from, checked while planning
    source = features_source(model)
    if source not in FEATURE_SOURCES:
        raise PlanError(
            f"models.{model}.features: {source!r} is neither grid, regions nor a name under features.backbones "
            f"({', '.join(BACKBONES) or 'none defined'})"
        )
    readable = model_name(model).spec.readable_stores
    if source_kind(source) not in readable:
        hint = ": grid or a features.backbones name" if readable == ("grid",) else ""
        raise PlanError(
            f"models.{model}.features: {source} is a {source_kind(source)} store; {family(model)} reads "
            f"{' or '.join(readable)} stores{hint}"
        )
    parent = parent_of(model)
    if parent:
        expected = ModelName.parse(recipe_of(model)).init_from
        if recipe_of(parent) != expected:
            raise PlanError(
                f"models.{model}.init_from: {parent} trains {recipe_of(parent)}'s recipe; {model} "
                f"({recipe_of(model)}) starts from a model of {expected}'s"
            )
        if features_source(parent) != source:
            raise PlanError(
                f"models.{model} reads {source} but starts from {parent}, which reads {features_source(parent)}; set "
                f"models.{model}.init_from to a model of {expected} on {source} (e.g. {expected}_{source}: "
                f"{{base: {expected}, features: {source}}})"
            )
for section in ("sat", "m2"):
    misplaced = sorted(set(config[section]) & (set(ENTRY_KEYS) - {"seeds"}))
    if misplaced:
        raise PlanError(
            f"{section}.{misplaced[0]}: a key of one model, not of the recipe: set models.<name>.{misplaced[0]}"
        )
