from threadpoolctl import threadpool_info, threadpool_limits

from infra.runtime import limit_blas_threads


def test_blas_pool_is_capped() -> None:
    with threadpool_limits(limits=None):  # restores the test process's pool afterwards
        limit_blas_threads(1)
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
