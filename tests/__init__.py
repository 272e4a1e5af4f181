from hypothesis import HealthCheck, settings

settings.register_profile(
    "tokengate",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=200,
)
settings.load_profile("tokengate")
