"""What each manual download looks like: the one text for `eyegazer prepare NAME --help` and
the builders' `MANUAL_DOWNLOAD_INSTRUCTIONS` (plain strings, no imports: the CLI reads them
without loading TensorFlow).
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = {
    "aptos2019": """\
APTOS 2019 is only available from Kaggle, after accepting the competition rules at
https://www.kaggle.com/competitions/aptos2019-blindness-detection/data

Download `aptos2019-blindness-detection.zip` (about 9.5 GB), either from that page or with
`kaggle competitions download -c aptos2019-blindness-detection`. Pass any of these as the manual
dir (`--manual_dir`, default `~/tensorflow_datasets/downloads/manual/`):

* the folder holding the zip (it is read in place, never extracted);
* the zip file itself;
* the extracted folder (`train.csv`, `test.csv`, `train_images/`, `test_images/`).

Then run `eyegazer prepare aptos2019 --manual-dir DIR` or
`eyegazer-tfds build datasets/aptos2019 --manual_dir DIR`.
""",
    "eyepacs2015": """\
EyePACS (Kaggle Diabetic Retinopathy Detection, 2015) is only available from Kaggle, after
accepting the competition rules at https://www.kaggle.com/competitions/diabetic-retinopathy-detection/data

Layout (any part may be the extracted folder, its zip, or the zip in parts as Kaggle ships it):

    trainLabels.csv            image,level           (or trainLabels.csv.zip)
    train/10_left.jpeg ...     35,126 photos         (or train.zip, or train.zip.001 ... .005)
    test/1_left.jpeg ...       optional, 53,576      (or test.zip, or test.zip.001 ... .007)
    retinopathy_solution.csv   image,level,Usage     optional; needs test/ (Kaggle's solution)
    sample/10_left.jpeg ...    optional              (or sample.zip)

Pass as the manual dir (`--manual_dir`) the folder holding these, or one zip holding the whole
layout. Nothing is downloaded. Then run `eyegazer prepare eyepacs2015 --manual-dir DIR` or
`eyegazer-tfds build datasets/eyepacs2015 --manual_dir DIR`.
""",
    "fundus_folder": """\
Put graded fundus photos in one folder per grade and pass that folder (or its zip, or the folder
holding the zip) as the manual dir:

    MANUAL_DIR/No_DR/xxx.png          grade 0   (also: 0, no_dr, normal, grade0, class0)
    MANUAL_DIR/Mild/yyy.jpeg          grade 1   (also: 1, mild_npdr)
    MANUAL_DIR/Moderate/...           grade 2   (also: 2, moderate_npdr)
    MANUAL_DIR/Severe/...             grade 3   (also: 3, severe_npdr)
    MANUAL_DIR/Proliferate_DR/...     grade 4   (also: 4, proliferative, pdr)

Case, spaces, '-' and '_' do not matter. Any other folder name is refused unless mapped with
`label_map` (`eyegazer prepare fundus_folder --label-map Blurry=0`). A single top folder holding
the class folders (as zips often have) is fine; subfolders of a class folder (`Mild/visit 2/`)
are read as that class. Photos: JPEG, PNG, GIF, BMP, WebP, TIFF and DICOM (.dcm, as fundus
cameras export them); any file name. Every file not read (macOS `._*`, `.DS_Store`,
`Thumbs.db`, other formats, files outside the class folders) is listed by reason in
build_report.json ('not_used') and in the summary. Optional: a groups CSV (`--groups FILE`, columns
`image,patient`; `image` is the file name or its stem) keeps each patient's photos in one split.
Then run `eyegazer prepare fundus_folder --manual-dir DIR`.
""",
}
