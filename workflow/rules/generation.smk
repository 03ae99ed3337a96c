# Generation: one job per (source, caption range) shard, so that a cluster runs shards as array
# jobs, then one index job per source. A source's jobs rerun when its resolved spec changes.
from synrep.config import digest
from synrep.generation.alignment_filter import index_spec
from synrep.diffusion.pipelines import is_hub_id
from synrep.generation.sources import made_sources, source_caption_count, source_spec

SHARDS = RESULTS / "shards"
# the sources that training reads, in the order the sweep names them, then those only judged; a
# union's sources before it (it joins their shards)
TRAINED_DATA = [spec.data for spec in RUNS.values()]
SOURCES = made_sources(CFG, TRAINED_DATA)
# generated for a training run (their jobs go first: training_path_priority)
TRAINED_SOURCES = set(made_sources(CFG, TRAINED_DATA, judged=False))


def training_path_priority(wildcards):
    return TRAINING_PATH_PRIORITY if wildcards.source in TRAINED_SOURCES else 0


wildcard_constraints:
    source="|".join(re.escape(s) for s in SOURCES) if SOURCES else "NO_SOURCES",
    index=r"[0-9]{6}",


def source_captions_input(wildcards):
    """The captions a source generates from: its own caption set, or the run's."""
    if CFG.sources[wildcards.source].caption_set is not None:
        return RESULTS / "source_captions" / wildcards.source / "captions.parquet"
    return RESULTS / "captions" / "captions.parquet"


def source_shards(wildcards):
    """Every shard of a source; the number of captions is known once dedup has run."""
    import polars as pl

    if CFG.sources[wildcards.source].caption_set is not None:
        parquet = checkpoints.source_captions.get(source=wildcards.source).output.captions
    else:
        parquet = checkpoints.captions.get().output.captions
    n = pl.scan_parquet(parquet).select(pl.len()).collect().item()
    n = source_caption_count(source_spec(CFG, wildcards.source), n)
    return [str(shard_path(SHARDS, s.source, s.index))
            for s in shard_ranges(n, CFG.generation.captions_per_shard, wildcards.source)]


def index_input(wildcards):
    """A source's shards; a union's, the indexes of the sources it joins."""
    spec = source_spec(CFG, wildcards.source)
    if spec["mode"] == "union":
        return [str(SHARDS / member["name"] / "index.parquet") for member in spec["union"]]
    return source_shards(wildcards)


def weights_input(model):
    """A local pipeline folder, or for a hub id the record of download_weights, which fetched it."""
    local = local_model_dir(model)
    if local or not is_hub_id(model):
        return local
    return [str(RESULTS / "weights" / f"{model.replace('/', '--')}.json")]


def shard_input(wildcards):
    spec = source_spec(CFG, wildcards.source)
    # a source with prompts of its own reads them (its params hash their content too)
    return weights_input(spec["generator"]) + ([spec["prompts"]["path"]] if "prompts" in spec else [])


# A hub id's pipeline, fetched once into the Hugging Face cache (only the files loading reads)
# with its weights' hash beside it; generation jobs then read both from the cache, never the hub.
# On the submitting host: compute nodes often have no route to the internet.
localrules:
    download_weights,


rule download_weights:
    output:
        RESULTS / "weights" / "{repo}.json",
    params:
        model=lambda wildcards: wildcards.repo.replace("--", "/", 1),
    wildcard_constraints:
        repo=r"[\w.-]+--[\w.-]+",
    log:
        LOGS / "download_weights" / "{repo}.log",
    shell:
        synrep("download_weights", "generation.model={params.model}")


rule generate_shard:
    input:
        shard_input,
        captions=source_captions_input,
    output:
        SHARDS / "{source}" / "shard-{index}.tar",
    params:
        source=lambda wildcards: digest(source_spec(CFG, wildcards.source)),
        shard=lambda wildcards: int(wildcards.index),
    priority: training_path_priority
    threads: GENERATION_THREADS
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "generate" / "{source}-{index}.log",
    shell:
        synrep("generate", "--source {wildcards.source} --shard {params.shard}")


rule index_source:
    input:
        index_input,
    output:
        index=SHARDS / "{source}" / "index.parquet",
        stats=SHARDS / "{source}" / "stats.json",
        grid=SHARDS / "{source}" / "grid.png",
    params:
        # with the filter: a changed filter re-indexes (its shards stay)
        source=lambda wildcards: digest(index_spec(CFG, wildcards.source)),
    priority: training_path_priority
    threads: 1
    log:
        LOGS / "index_{source}.log",
    shell:
        synrep("index", "--source {wildcards.source}")


# What each source's images are like (the judge on its shards), for the generator-family table.
# Toy world only (sample_quality.enabled): the judge reads toy attributes.
rule source_quality:
    input:
        SHARDS / "{source}" / "index.parquet",
        [q for q in [CFG.sample_quality.classifier] if q and Path(q).exists()],
        # the CLIPs that score, those a rule trains included (rules/toy_models.smk): a held-out CLIP
        # in results/ is waited for, not raced
        SCORING_CLIPS,
    output:
        RESULTS / "source_quality" / "{source}.json",
    params:
        source=lambda wildcards: digest(source_spec(CFG, wildcards.source)),
        config=section_hash(CFG, "sample_quality", "toyworld"),
    threads: 1
    log:
        LOGS / "source_quality_{source}.log",
    shell:
        synrep("source_quality", "--source {wildcards.source}")
