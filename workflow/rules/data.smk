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
