"""The fitted quality score of `fundus.quality_score` (written by benchmarks/quality_gate.py).

Fitted 2026-12-07 at commit 67a46e0 by
`python benchmarks/quality_gate.py --data ../shared/realdata/eyepacs-raw --extra ../shared/realdata/eyepacs-enhanced-256 --fit eyegazer_keras/fundus/quality_model.py`:
logistic regression (sklearn, class_weight='balanced', C=0.03) of EyeQ Reject vs Good+Usable on 1422 real EyePACS-2015 photos
with EyeQ's human labels (H. Fu et al., MICCAI 2019); the threshold refuses 3% of the 135 Good photos of --data.
Held-out figures (patient-grouped CV): benchmarks/NOTES.md, 'Quality gate'.
"""

# score = 1 - sigmoid(INTERCEPT + sum(w * (log(|m| + 1e-3) - mu) / sigma)); name: (mu, sigma, w)
INTERCEPT = -0.9375010581833333
COEFFICIENTS = {
    "peak": (5.5113403789116635, 0.12003907167055787, -0.13307752735601594),
    "fundus_fraction": (-0.3438476191327157, 0.21484835783460754, 0.11996047199555025),
    "radius_fraction": (-0.005061674089466756, 0.09247424627661575, -0.047672456964123845),
    "mean_luma": (4.905755760905317, 0.1879399164239311, -0.5059234138459197),
    "saturated_fraction": (-3.3243140184005657, 1.4334384102215945, -0.3103291999242649),
    "sharpness": (-2.7530026156569942, 0.49731261699087287, -0.39214746268069517),
    "green_contrast": (-0.9210152314593267, 0.3046179901141191, 0.9038117598946716),
    "green_detail_1": (-3.1917154268046466, 0.4970116767916324, -0.4154582827555244),
    "green_detail_2": (-2.637679210125496, 0.4783816919837193, -0.6267785877283057),
    "green_detail_4": (-2.3088923445074583, 0.445529430188555, -0.3020583433979903),
    "vessel_contrast": (-3.4249938615512536, 0.45008580334516113, 0.059261664446612294),
    "illumination_cv": (-1.1173396964370457, 0.32206284771396154, 0.11517515743507833),
    "dark_fraction": (-3.0320671993792265, 1.6376671973182466, 0.3130694036863539),
    "rim_over_centre": (-0.3792471416589589, 0.35078854765695705, 0.5949725006391245),
    "blue_over_red": (-0.21548362938793236, 0.40232999620808885, 0.4841377021138805),
    "green_over_red": (-0.09973054338878207, 0.17015834627831297, 0.4577640729382735),
    "colour_saturation": (-1.3420083289118465, 0.49571620369328273, 0.2615417491618779),
}
# gradable when quality_score >= THRESHOLD
THRESHOLD = 0.5696437175345896
