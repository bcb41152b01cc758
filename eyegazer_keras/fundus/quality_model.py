"""The fitted quality score of `fundus.quality_score` (written by benchmarks/quality_gate.py).

Fitted 2026-12-07 on the measures committed in 02998c1 by
`python benchmarks/quality_gate.py --data ../shared/realdata/eyepacs-raw --extra ../shared/realdata/eyepacs-enhanced-256 --fit eyegazer_keras/fundus/quality_model.py`:
logistic regression (sklearn, class_weight='balanced', C=0.03) of EyeQ Reject vs Good+Usable on 1422 real EyePACS-2015 photos
with EyeQ's human labels (H. Fu et al., MICCAI 2019); the threshold refuses 3% of the 135 Good photos of --data.
Held-out figures (patient-grouped CV): benchmarks/NOTES.md, 'Quality gate'.
"""

# score = 1 - sigmoid(INTERCEPT + sum(w * clip((log(|m| + 1e-3) - mu) / sigma, -5, 5)))
# name: (mu, sigma, w)
INTERCEPT = -0.921147160811433
COEFFICIENTS = {
    "peak": (5.5113403789116635, 0.12003907167055787, -0.1186931577927016),
    "fundus_fraction": (-0.3438476191327157, 0.21484835783460754, 0.1540478308902483),
    "radius_fraction": (-0.005061674089466756, 0.09247424627661575, -0.0029403171642425254),
    "mean_luma": (4.905755760905317, 0.1879399164239311, -0.5153657448169908),
    "saturated_fraction": (-3.3243140184005657, 1.4334384102215945, -0.29008160908345754),
    "sharpness": (-2.7530026156569942, 0.49731261699087287, -0.3887084718389235),
    "green_contrast": (-0.9210152314593267, 0.3046179901141191, 0.9589055776879872),
    "green_detail_1": (-3.1917154268046466, 0.4970116767916324, -0.4067916191777198),
    "green_detail_2": (-2.637679210125496, 0.4783816919837193, -0.6282259550881419),
    "green_detail_4": (-2.3088923445074583, 0.445529430188555, -0.3125531571899804),
    "vessel_contrast": (-3.4249938615512536, 0.45008580334516113, 0.046691380904271135),
    "illumination_cv": (-0.9919501138361003, 0.21357384716944527, 0.04526364414658979),
    "dark_fraction": (-2.4266014515165977, 0.9317852053663881, 0.21077157280011202),
    "rim_over_centre": (-0.3792471416589589, 0.35078854765695705, 0.6237598634464978),
    "blue_over_red": (-0.21548362938793236, 0.40232999620808885, 0.5158058896720037),
    "green_over_red": (-0.09973054338878207, 0.17015834627831297, 0.4921367331084946),
    "colour_saturation": (-1.3420083289118465, 0.49571620369328273, 0.24190988498107852),
}
# gradable when quality_score >= THRESHOLD
THRESHOLD = 0.5443990054975253
