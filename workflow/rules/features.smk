# Stage 1: grid features (Show-Attend-Tell) and region features (M²) into chunked stores.

FEATURES = config["features"]


rule extract_grid:
    input:
        unpack(image_inputs),
    output:
        store_output("grid"),
    params:
        grid=FEATURES["grid"],
        run=extract_run_args(),
        root=lambda wildcards: IMAGE_ROOT,
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
        run=extract_run_args(),
        root=lambda wildcards: IMAGE_ROOT,
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
