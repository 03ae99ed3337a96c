# Generation: one job per (w, caption range) shard, so that a cluster runs shards as array jobs.

SHARDS = RESULTS / "shards"


wildcard_constraints:
    w=r"[0-9]+(\.[0-9]+)?",
    index=r"[0-9]{6}",


def all_shards(wildcards):
    """Every shard of the plan; the number of captions is known once dedup has run."""
    import polars as pl

    parquet = checkpoints.captions.get().output.captions
    n = pl.scan_parquet(parquet).select(pl.len()).collect().item()
    g = CFG.generation
    return [str(shard_path(SHARDS, s.w, s.index)) for s in plan_shards(n, g.captions_per_shard, g.guidance_scales)]


rule generate_shard:
    input:
        local_model_dir(CFG.generation.model),
        captions=RESULTS / "captions" / "captions.parquet",
    output:
        SHARDS / "w{w}" / "shard-{index}.tar",
    params:
        config=section_hash(CFG, "generation"),
        shard=lambda wildcards: int(wildcards.index),
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "generate" / "w{w}-{index}.log",
    shell:
        synrep("generate", "--w {wildcards.w} --shard {params.shard}")


rule index_shards:
    input:
        all_shards,
    output:
        index=SHARDS / "index.parquet",
        stats=SHARDS / "stats.json",
    params:
        config=section_hash(CFG, "generation"),
    threads: 1
    log:
        LOGS / "index_shards.log",
    shell:
        synrep("index")
