# Stage 1: grid features (Show-Attend-Tell) and region features (M²) into chunked stores.

FEATURES = config["features"]


def image_inputs(wildcards=None):
    # demo images are a rule output; a COCO image root is a fixed external folder (not tracked file by file)
    return {"json": KARPATHY_JSON, "images": f"{RUN}/dataset/images"} if DEMO else {"json": KARPATHY_JSON}


def common_extract_args():
    f = FEATURES
    return (f"--batch-size {f['batch_size']} --num-workers {f['num_workers']} --device {f['device']}"
            f" --dtype {f['dtype']} --on-error {f['on_error']}"
            + (f" --compression {f['compression']}" if f["compression"] != "none" else ""))


rule extract_grid:
    input:
        unpack(image_inputs),
    output:
        store_output("grid"),
    params:
        grid=FEATURES["grid"],
        run=common_extract_args(),
        root=IMAGE_ROOT,
        code=code("features.extract"),
    threads: FEATURES["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/extract_grid.log",
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m features extract --kind grid --karpathy-json {input.json} --image-root {params.root}"
        " --out {output} --backbone {params.grid[backbone]} --weights {params.grid[weights]:q}"
        " --image-size {params.grid[image_size]} --grid-size {params.grid[grid_size]}"
        " --threads {threads} {params.run} 2> {log}"


rule extract_regions:
    input:
        unpack(image_inputs),
        boxes=BOXES_JSON,
    output:
        store_output("regions"),
    params:
        regions=FEATURES["regions"],
        run=common_extract_args(),
        root=IMAGE_ROOT,
        code=code("features.extract"),
    threads: FEATURES["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/extract_regions.log",
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m features extract --kind regions --karpathy-json {input.json} --image-root {params.root}"
        " --boxes {input.boxes} --out {output} --backbone {params.regions[backbone]}"
        " --weights {params.regions[weights]:q} --min-size {params.regions[min_size]}"
        " --max-size {params.regions[max_size]} --max-boxes {params.regions[max_boxes]}"
        " --threads {threads} {params.run} 2> {log}"
