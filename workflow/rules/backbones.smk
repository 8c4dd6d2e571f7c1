# The weights of the timm backbones of features.backbones (weights: hub), fetched and pinned like every other file
# (python -m captioner download): with dataset.download, or wherever an entry names its weights_url (a mirror, a local
# server); otherwise the file is an input placed by hand at dataset.weights_root/timm/<model>.safetensors, checked
# while planning. A local rule (under SLURM it runs where Snakemake runs, which has internet).

# {timm model: URL} of the weights a rule fetches
TIMM_DOWNLOADS = {}
for source, entry in BACKBONES.items():
    if entry["weights"] == "hub" and (DOWNLOAD or entry["weights_url"]):
        url = timm_weights_url(source)
        if TIMM_DOWNLOADS.setdefault(entry["model"], url) != url:
            raise PlanError(
                f"features.backbones.{source}.weights_url: {entry['model']} is fetched from "
                f"{TIMM_DOWNLOADS[entry['model']]} for another backbone entry; give both the same weights_url"
            )

if TIMM_DOWNLOADS:

    localrules:
        timm_weights,

    rule timm_weights:
        # the tag's model.safetensors as timm fetches it; no checksum is published for a hub file at `main`, so the
        # first download's SHA-256 is pinned in LOCK_FILE and checked from then on
        output:
            f"{WEIGHTS_ROOT}/timm/{{timm_model}}.safetensors",
        log:
            f"{WEIGHTS_ROOT}/logs/timm/{{timm_model}}.log",
        benchmark:
            f"{BENCHMARKS}/download/timm/{{timm_model}}.tsv"
        wildcard_constraints:
            timm_model="|".join(re.escape(m) for m in TIMM_DOWNLOADS),
        conda:
            "../../envs/download.yaml"
        params:
            fetch=lambda wc, output: download_command(TIMM_DOWNLOADS[wc.timm_model], output[0]),
        shell:
            "{params.fetch} 2>&1 | tee {log} >&2"
