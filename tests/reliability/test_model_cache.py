from doodl_nodes.bridge.model_cache import SharedModelCache


def test_lru_reuses_and_evicts_the_least_recently_used():
    cache, loads = SharedModelCache(capacity=2), []

    def loader(name):
        return lambda: loads.append(name) or f"model {name}"

    assert cache.get("a", loader("a")) == "model a"
    cache.get("b", loader("b"))
    assert cache.get("a", loader("a")) == "model a"  # hit: a becomes most recent
    cache.get("c", loader("c"))                      # evicts b
    cache.get("a", loader("a"))
    cache.get("b", loader("b"))                      # b was evicted: loads again
    assert loads == ["a", "b", "c", "b"] and len(cache) == 2 and cache.loads == 4
    cache.clear()
    assert len(cache) == 0
