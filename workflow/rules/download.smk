# Stage -1 (dataset.download): the dataset's images (COCO 2014, Flickr8k), Karpathy's splits and the weights the config
# names, fetched and checked
# (python -m captioner download / unpack, pipeline/download.py). Local rules: under SLURM they run where Snakemake
# runs, which has internet; compute nodes then find everything on disk. A transfer resumes where it stopped, and a
# zip placed by hand at the path an error names is verified by the same rule and used.
# No code fingerprint here: what these jobs produce is pinned by its checksum (or file count), not by our code.


localrules:
    image_archive,
    karpathy_json,
    torchvision_weights,


# the dataset's image folders that have a download URL: {folder under dataset.root: its dataset.sources key}
FETCHED_FOLDERS = {folder: key for key, folder in DATASET["archives"].items() if SOURCES[key].get("url")}


rule image_archive:
    # one image zip of the dataset (DATASETS in common.smk), unpacked to its folder and its files counted
    output:
        directory(f"{DATA_ROOT}/{{folder}}"),
    log:
        f"{DATA_ROOT}/logs/{{folder}}.log",
    benchmark:
        f"{BENCHMARKS}/download/{{folder}}.tsv"
    wildcard_constraints:
        folder="|".join(FETCHED_FOLDERS) or "(?!)",
    conda:
        "../../envs/download.yaml"
    params:
        fetch=lambda wc: fetch_zip_command(FETCHED_FOLDERS[wc.folder], f"{ZIP_DIR}/{wc.folder}.zip"),
        zip=lambda wc: f"{ZIP_DIR}/{wc.folder}.zip",
        files=lambda wc: SOURCES[FETCHED_FOLDERS[wc.folder]]["files"],
        drop=lambda wc: drop_zip(f"{ZIP_DIR}/{wc.folder}.zip"),
    shell:
        # to the terminal as well as the log: the progress bar (bytes/s, ETA) of a multi-hour transfer
        "({params.fetch} && python -m captioner unpack --zip {params.zip} --entry {wildcards.folder}"
        " --out {output} --expect-files {params.files}{params.drop}) 2>&1 | tee {log} >&2"


rule karpathy_json:
    output:
        KARPATHY_JSON,
    log:
        f"{DATA_ROOT}/logs/karpathy_json.log",
    benchmark:
        f"{BENCHMARKS}/download/karpathy_json.tsv"
    conda:
        "../../envs/download.yaml"
    params:
        fetch=fetch_zip_command("karpathy", f"{ZIP_DIR}/caption_datasets.zip"),
        zip=f"{ZIP_DIR}/caption_datasets.zip",
        drop=drop_zip(f"{ZIP_DIR}/caption_datasets.zip"),
    shell:
        # (the dataset's name written into the command, not a param: for COCO the command of old, so no refetch)
        f"({{params.fetch}} && python -m captioner unpack --zip {{params.zip}} --entry dataset_{DATASET_NAME}.json"
        " --out {output}{params.drop}) 2>&1 | tee {log} >&2"


rule torchvision_weights:
    # ImageNet weights of a grid (or given-boxes) trunk, checked by torch.hub as torchvision checks them
    output:
        f"{WEIGHTS_ROOT}/{{backbone}}-{{weights}}.pth",
    log:
        f"{WEIGHTS_ROOT}/logs/{{backbone}}-{{weights}}.log",
    benchmark:
        f"{BENCHMARKS}/download/{{backbone}}-{{weights}}.tsv"
    wildcard_constraints:
        backbone=r"resnet\d+",
        weights=r"[A-Z0-9_]+",
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m captioner torchvision-weights --weights {wildcards.backbone}:{wildcards.weights} --out {output}"
        " 2>&1 | tee {log} >&2"


if detector_weights_url():

    localrules:
        detector_weights,

    rule detector_weights:
        # no checksum is published: the first download's SHA-256 is pinned in LOCK_FILE and checked from then on
        output:
            config["features"]["regions"]["weights"],
        log:
            f"{WEIGHTS_ROOT}/logs/detector_weights.log",
        benchmark:
            f"{BENCHMARKS}/download/detector_weights.tsv"
        conda:
            "../../envs/download.yaml"
        params:
            url=shlex.quote(detector_weights_url()),
            lock=LOCK_FILE,
        shell:
            "python -m captioner download --url {params.url} --out {output} --lock {params.lock}"
            " 2>&1 | tee {log} >&2"
