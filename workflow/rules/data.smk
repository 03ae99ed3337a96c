# The toy world and the caption set.

WORLD = Path(CFG.paths.data_dir) / "toyworld"


rule toyworld:
    output:
        captions=WORLD / "captions_raw.tsv",
        train=WORLD / "real" / "train.npz",
        val=WORLD / "real" / "val.npz",
        test=WORLD / "real" / "test.npz",
        domains_train=WORLD / "real" / "domains_train.npz",
        domains_test=WORLD / "real" / "domains_test.npz",
        attributes=WORLD / "attributes.json",
    params:
        config=section_hash(CFG, "toyworld"),
    priority: TRAINING_PATH_PRIORITY
    threads: 1
    log:
        LOGS / "toyworld.log",
    shell:
        synrep("toyworld")


checkpoint captions:
    input:
        CFG.captions.path,
    output:
        captions=RESULTS / "captions" / "captions.parquet",
        stats=RESULTS / "captions" / "stats.json",
    params:
        config=section_hash(CFG, "captions"),
    priority: TRAINING_PATH_PRIORITY
    threads: 1
    log:
        LOGS / "captions.log",
    shell:
        synrep("captions")


# A source's caption set of its own (sources.<name>.caption_set, e.g. captions drawn from a concept
# list); after the run's, whose count it takes by default.
checkpoint source_captions:
    input:
        RESULTS / "captions" / "stats.json",
        lambda wildcards: [f for f in [CFG.sources[wildcards.source].caption_set.concepts.file] if f],
    output:
        captions=RESULTS / "source_captions" / "{source}" / "captions.parquet",
        stats=RESULTS / "source_captions" / "{source}" / "stats.json",
    params:
        config=lambda wildcards: digest(source_spec(CFG, wildcards.source)["caption_set"]),
    priority: TRAINING_PATH_PRIORITY
    threads: 1
    log:
        LOGS / "captions_{source}.log",
    shell:
        synrep("captions", "--source {wildcards.source}")
