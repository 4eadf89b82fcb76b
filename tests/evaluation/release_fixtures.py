"""Benchmark releases in miniature: each builder writes a folder laid out exactly like the public download
(file and folder names, field names, encodings, archives, image referencing) with the release's decoys, and
returns its root and what a reader must find there. The source of every layout is named in the builder.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(colour=(200, 30, 90), fmt="PNG", mode="RGB") -> bytes:
    """A small image in one of the encodings releases ship: RGB/CMYK JPEG, palette or 16-bit PNG, TIFF."""
    if mode == "I;16":
        im = Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).astype(np.uint16))
    elif mode == "P":
        im = Image.new("RGB", (16, 16), colour).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        im = Image.new("RGB", (16, 16), colour).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, colour=(200, 30, 90), fmt="PNG", mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(colour, fmt, mode))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False))
    return path


def copy_into(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / src.name
    target.write_bytes(src.read_bytes())
    return target


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------------------------------------- builders


def medxpertqa(tmp: Path) -> Path:
    """HF TsinghuaC3I/MedXpertQA: MM/{dev,test}.jsonl, Text/{dev,test}.jsonl, images.zip (-> images/ beside MM/).
    MM test: 3 questions (MM-0 one image, MM-1 two, MM-2 a CMYK JPEG); dev: 2 (ids of the same form, so only the
    split keeps them apart); Text: 3 + 1 text-only decoys."""
    root = tmp / "MedXpertQA"

    def q(i, n_images, label, qtype, stem):
        opts = {c: f"{stem} option {c}" for c in "ABCDE"}
        block = " ".join(f"({c}) {t}" for c, t in opts.items())
        return {"id": f"MM-{i}", "question": f"Case {i}: what is shown?\nAnswer Choices: {block}", "options": opts,
                "label": label, "images": [f"MM-{i}-{'ab'[k]}.jpeg" for k in range(n_images)],
                "medical_task": "Diagnosis", "body_system": "Endocrine", "question_type": qtype}

    write_jsonl(root / "MM" / "test.jsonl", [q(0, 1, "A", "Reasoning", "t"), q(1, 2, "B", "Understanding", "t"),
                                             q(2, 1, "E", "Reasoning", "t")])
    write_jsonl(root / "MM" / "dev.jsonl", [q(0, 1, "C", "Reasoning", "d"), q(1, 1, "D", "Reasoning", "d")])
    text = [{"id": f"Text-{i}", "question": "A text-only question", "options": {"A": "x", "B": "y"}, "label": "A",
             "images": [], "medical_task": "Treatment", "body_system": "Skeletal", "question_type": "Reasoning"}
            for i in range(4)]
    write_jsonl(root / "Text" / "test.jsonl", text[:3])
    write_jsonl(root / "Text" / "dev.jsonl", text[3:])
    write_zip(root / "images.zip", {"images/MM-0-a.jpeg": image_bytes((10, 10, 10), "JPEG"),
                                    "images/MM-1-a.jpeg": image_bytes((20, 10, 10), "JPEG"),
                                    "images/MM-1-b.jpeg": image_bytes((30, 10, 10), "JPEG"),
                                    "images/MM-2-a.jpeg": image_bytes((40, 10, 10), "JPEG", "CMYK")})
    return root


def mmmu(tmp: Path) -> Path:
    """HF MMMU/MMMU: <Subject>/{dev,validation,test}-00000-of-00001.parquet; options a Python list literal,
    image_1..image_7 {bytes, path} structs (None when absent), <image n> in question and options, open questions,
    test answers withheld ('?'). Health & Medicine validation: Clinical_Medicine 2 + Pharmacy 2 (one open);
    decoys: Art_Theory, every subject's dev and test."""
    root = tmp / "MMMU"

    def row(split, subject, n, question, options, answer, images, qtype="multiple-choice"):
        r = {"id": f"{split}_{subject}_{n}", "question": question, "options": repr(options), "explanation": "",
             "img_type": "['Pathology']", "answer": answer, "topic_difficulty": "Medium", "question_type": qtype,
             "subfield": "Pathology"}
        for k in range(1, 8):
            r[f"image_{k}"] = ({"bytes": image_bytes((k * 20, n * 30, len(subject)), "PNG"), "path": f"{n}_{k}.png"}
                               if k <= images else None)
        return r

    subjects = {
        "Clinical_Medicine": [("<image 1> Which lesion is shown?", ["Abscess", "Granuloma", "Infarct"], "B", 1),
                              ("Compare <image 1> with <image 2>. Which stain was used in <image 2>?",
                               ["H&E", "PAS", "Congo red", "Trichrome"], "C", 2)],
        "Pharmacy": [("Which structure matches?", ["<image 2>", "<image 3>", "Neither"], "A", 3)],
        "Art_Theory": [("<image 1> Which period?", ["Baroque", "Gothic"], "A", 1)],
    }
    for subject, questions in subjects.items():
        for split in ("dev", "validation", "test"):
            rows = [row(split, subject, n, q, o, "?" if split == "test" else a, k)
                    for n, (q, o, a, k) in enumerate(questions, 1)]
            if subject == "Pharmacy" and split == "validation":
                rows.append(row(split, subject, 2, "<image 1> How many mg per tablet?", [], "4", 1, "open"))
            write_parquet(root / subject / f"{split}-00000-of-00001.parquet", rows)
    return root


def quiltvqa(tmp: Path, *, helper: bool = True) -> Path:
    """HF wisdomik/Quilt_VQA: quiltvqa_test_w_ans.json (id, image, question, answer, answer_type OPEN/CLOSED,
    yes_no_answer on CLOSED rows; scored by Quilt-LLaVA llava/eval/quilt_eval.py), quiltvqa_test_wo_ans.jsonl
    (question_id, image, text: no answers), quilt_vqa.zip (the images) and data/train-00000-of-00001.parquet
    (image struct, question, answer, answer_type, context). 4 answered questions: 2 CLOSED, 2 OPEN.
    ``helper=False``: the parquet only, whose CLOSED rows carry no yes_no_answer."""
    root = tmp / "Quilt_VQA"
    rows = [
        {"id": 0, "image": "lk7a1.jpg", "question": "Are there signs of perineural invasion?",
         "answer": "Yes, there are signs of perineural invasion around the nerve.", "answer_type": "CLOSED",
         "yes_no_answer": "yes"},
        {"id": 1, "image": "lk7a2.jpg", "question": "What cells infiltrate the dermis?",
         "answer": "Lymphocytes and plasma cells", "answer_type": "OPEN"},
        {"id": 2, "image": "lk7a1.jpg", "question": "Is this benign?",
         "answer": "No, the nuclear atypia and mitoses point to a malignant tumour.", "answer_type": "CLOSED",
         "yes_no_answer": "no"},
        {"id": 3, "image": "lk7a3.jpg", "question": "What is the diagnosis?", "answer": "Adenoid cystic carcinoma",
         "answer_type": "OPEN"},
    ]
    images = {n: image_bytes((i * 60, 90, 120), "JPEG") for i, n in enumerate(["lk7a1.jpg", "lk7a2.jpg", "lk7a3.jpg"])}
    parquet = [{"image": {"bytes": images[r["image"]], "path": r["image"]}, "question": r["question"],
                "answer": r["answer"], "answer_type": r["answer_type"].lower(), "context": "narration"} for r in rows]
    write_parquet(root / "data" / "train-00000-of-00001.parquet", parquet)
    if helper:
        write_json(root / "quiltvqa_test_w_ans.json", rows)
        write_jsonl(root / "quiltvqa_test_wo_ans.jsonl",
                    [{"question_id": r["id"], "image": r["image"], "text": r["question"]} for r in rows])
        write_zip(root / "quilt_vqa.zip", {f"quilt_vqa/images/{n}": b for n, b in images.items()})
    return root


def pathmmu(tmp: Path) -> Path:
    """HF jamessyx/PathMMU data.json + images.zip (-> images/), read as PathMMU-Benchmark/PathMMU
    eval/utils/data_utils.py does: data[subset][split], image = images/<img>, records without their image skipped.
    `No` restarts in every list. Test: PubMed 2 + Atlas 2 = 4; decoys: val, test_tiny, a SocialPath item whose image
    is not shipped (fetched from Twitter)."""
    root = tmp / "PathMMU"

    def rec(no, img, answer="B) IHC"):
        return {"No": no, "img": img, "question": f"Question {no} on {img}?", "options": ["A) H&E", "B) IHC", "C) PAS"],
                "answer": answer, "explanation": "because"}

    write_json(root / "data.json", {
        "PubMed": {"val": [rec(1, "pm_v1.jpg")], "test": [rec(1, "pm_1.jpg"), rec(2, "pm_2.jpg", "A) H&E")],
                   "test_tiny": [rec(1, "pm_1.jpg")]},
        "Atlas": {"test": [rec(1, "at_1.png"), rec(2, "at_2.png", "C) PAS")]},
        "SocialPath": {"test": [rec(1, "9e48f82c8b7e8b3ad24cf8dd158e8635.jpg")]},
    })
    write_zip(root / "images.zip", {f"images/{n}": image_bytes((i * 40, 0, 0), "PNG")
                                    for i, n in enumerate(["pm_v1.jpg", "pm_1.jpg", "pm_2.jpg", "at_1.png", "at_2.png"])})
    return root


def omnimedvqa(tmp: Path) -> Path:
    """OmniMedVQA release root: QA_information/{Open-access,Restricted-access}/<dataset>.json + Images/. Items:
    question_id, question_type, question, gt_answer (option text), option_A..D (2-4), image_path relative to the
    root (spaces, parentheses), modality_type (one file writes `modality`). Open-access: 3 (one 2-option, one
    `modality`, a palette PNG and a 16-bit PNG); Restricted-access: 2 whose images the release lacks."""
    root = tmp / "OmniMedVQA"
    ct = "Images/Chest CT Scan/test/adenocarcinoma/000108 (3).png"
    write_image(root / ct, mode="P")
    write_image(root / "Images/ACRIMA/Im001_ACRIMA.png", mode="I;16")
    open_access = root / "QA_information" / "Open-access"
    write_json(open_access / "Chest CT Scan.json", [
        {"dataset": "Chest CT Scan", "question_id": "Chest CT Scan_0", "question_type": "Modality Recognition",
         "question": "Which modality is this?", "gt_answer": "CT", "image_path": ct, "option_A": "MRI",
         "option_B": "CT", "option_C": "X-ray", "option_D": "PET", "modality_type": "CT(Computed Tomography)"},
        {"dataset": "Chest CT Scan", "question_id": "Chest CT Scan_1", "question_type": "Disease Diagnosis",
         "question": "What is the finding?", "gt_answer": "Adenocarcinoma", "image_path": ct,
         "option_A": "Adenocarcinoma", "option_B": "No, It's normal.", "option_C": "Pneumonia",
         "modality": "CT(Computed Tomography)"}])
    write_json(open_access / "ACRIMA.json", [
        {"dataset": "ACRIMA", "question_id": "ACRIMA_0", "question_type": "Disease Diagnosis",
         "question": "Is there glaucoma?", "gt_answer": "No", "image_path": "Images/ACRIMA/Im001_ACRIMA.png",
         "option_A": "Yes", "option_B": "No", "modality_type": "Fundus Photography"}])
    write_json(root / "QA_information" / "Restricted-access" / "AIDA.json", [
        {"dataset": "AIDA", "question_id": f"AIDA_{i}", "question_type": "Disease Diagnosis", "question": "Which?",
         "gt_answer": "Normal", "image_path": f"Images/AIDA/{i}.jpg", "option_A": "Normal", "option_B": "Ulcer",
         "modality_type": "Endoscopy"} for i in range(2)])
    return root


def medr1_splits(tmp: Path, images: Path) -> Path:
    """Med-R1's OmniMedVQA splits (Yuxiang-Lai117/Med-R1): one JSON per modality / question type and split,
    records {image, problem "question? A)x, B)y", solution "<answer> B </answer>"}. Test: X-Ray 2 + CT 1;
    decoy: the train file."""
    root = tmp / "splits" / "modality"
    img = "Images/ACRIMA/Im001_ACRIMA.png"
    write_json(root / "test" / "X-Ray_test.json", [
        {"image": img, "problem": "What type of abnormality is depicted? A)Infection, B)No, It's normal, C)Tumor",
         "solution": "<answer> B </answer>"},
        {"image": img, "problem": "Which view? A)PA, B)Lateral", "solution": "<answer> A </answer>"}])
    write_json(root / "test" / "CT_test.json", [
        {"image": img, "problem": "Which organ? A)Lung, B)Liver", "solution": "<answer> A </answer>"}])
    write_json(root / "train" / "X-Ray_train.json", [
        {"image": img, "problem": "Which side? A)Left, B)Right", "solution": "<answer> B </answer>"}])
    return root


def pathvqa(tmp: Path) -> Path:
    """HF flaviagiammarino/path-vqa: data/{train,validation,test}-0000i-of-0000n.parquet (train in 2 shards),
    image {bytes, path}, question, answer. Test: 3 yes/no + 2 open; train 2+1 rows, validation 1 are decoys."""
    root = tmp / "path-vqa"

    def rows(n_yes, n_open, tag):
        out = [{"image": {"bytes": image_bytes((i * 20, 1, 2), "JPEG"), "path": None},
                "question": f"{tag}: is there necrosis {i}?", "answer": "yes" if i % 2 else "no"} for i in range(n_yes)]
        return out + [{"image": {"bytes": image_bytes((3, i * 20, 2), "PNG"), "path": None},
                       "question": f"{tag}: what organ {i}?", "answer": "liver"} for i in range(n_open)]

    write_parquet(root / "data" / "test-00000-of-00001.parquet", rows(3, 2, "test"))
    write_parquet(root / "data" / "train-00000-of-00002.parquet", rows(2, 0, "train"))
    write_parquet(root / "data" / "train-00001-of-00002.parquet", rows(0, 1, "train"))
    write_parquet(root / "data" / "validation-00000-of-00001.parquet", rows(1, 0, "val"))
    return root


def slake(tmp: Path, fixtures: Path) -> Path:
    """HF BoKelvin/SLAKE: {train,validation,test}.json (img_name "xmlab102/source.jpg", q_lang en/zh, qid,
    answer_type) + imgs.zip (-> imgs/xmlabN/source.jpg). Test: 3 English (+1 Chinese decoy); train/validation
    are decoys."""
    root = tmp / "SLAKE"
    root.mkdir(parents=True)
    (root / "test.json").write_text((fixtures / "slake" / "test.json").read_text())
    one = {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Is this a CT?", "answer": "Yes", "q_lang": "en",
           "location": "Abdomen", "modality": "CT", "answer_type": "CLOSED", "base_type": "vqa",
           "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 1}
    write_json(root / "train.json", [one, {**one, "q_lang": "zh", "question": "这是CT吗？", "answer": "是", "qid": 2}])
    write_json(root / "validation.json", [{**one, "qid": 3}])
    write_zip(root / "imgs.zip", {f"imgs/xmlab{n}/source.jpg": image_bytes((n, 50, 50), "JPEG") for n in (1, 7, 102)})
    return root


def pmcvqa(tmp: Path) -> Path:
    """HF xmcmic/PMC-VQA: test_clean.csv, test.csv, train.csv (Figure_path, Question, Answer, Choice A..D as
    "A:text", Answer_label) + images.zip (-> images/). test_clean: 2; test 3 and train 1 are decoys."""
    root = tmp / "PMC-VQA"
    header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]

    def write(name, n):
        root.mkdir(parents=True, exist_ok=True)
        with (root / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i in range(n):
                w.writerow([f"PMC{i}_fig1.jpg", f"What technique ({name} {i})? ", "Immunohistochemistry", " A:CT ",
                            " B:Immunohistochemistry ", " C:MRI ", " D:Ultrasound ", "B"])

    write("test_clean.csv", 2)
    write("test.csv", 3)
    write("train.csv", 1)
    write_zip(root / "images.zip", {f"images/PMC{i}_fig1.jpg": image_bytes((i, i, 90), "JPEG") for i in range(3)})
    return root


def vqarad(tmp: Path, fixtures: Path) -> Path:
    """The OSF VQA-RAD release: 'VQA_RAD Dataset Public.json' + 'VQA_RAD Image Folder/' (test = phrase_type
    test_*: 3; train: 1)."""
    import shutil

    root = Path(shutil.copytree(fixtures / "vqarad", tmp / "VQA-RAD"))
    for n in ("synpic54610.jpg", "synpic29265.jpg", "synpic42202.jpg"):
        write_image(root / "VQA_RAD Image Folder" / n, fmt="JPEG")
    return root


def vqarad_hf(tmp: Path) -> Path:
    """HF flaviagiammarino/vqa-rad (lmms-eval's VQA-RAD): data/{train,test}-00000-of-00001-<hash>.parquet with
    image {bytes, path}, question, answer; no answer_type. Test: 2 yes/no + 1 open; train 2 rows are decoys."""
    root = tmp / "vqa-rad"
    test = [{"image": {"bytes": image_bytes((i * 50, 5, 5), "JPEG"), "path": None}, "question": q, "answer": a}
            for i, (q, a) in enumerate([("Is there a pneumothorax?", "no"), ("Is the heart enlarged?", "yes"),
                                        ("Which organ is abnormal?", "lungs")])]
    write_parquet(root / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet", test)
    write_parquet(root / "data" / "train-00000-of-00001-eb8844602202be60.parquet", test[:2])
    return root
