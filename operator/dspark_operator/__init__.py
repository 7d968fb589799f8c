"""dspark_operator: the Kopf operator that reconciles DSparkTrainingJob resources."""

__version__ = "0.1.0"
