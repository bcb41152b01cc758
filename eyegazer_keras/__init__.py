"""eyegazer-keras: diabetic-retinopathy grading with Keras. Not a medical device."""

__version__ = "0.1.0"

NOT_A_MEDICAL_DEVICE = (
    "Research software. Not a medical device: not cleared or approved for diagnosis, "
    "screening or treatment decisions."
)
GRADE_NAMES = ("no_dr", "mild", "moderate", "severe", "proliferative")
