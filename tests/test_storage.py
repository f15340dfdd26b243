"""Listing a location: what is an image by name, and what is skipped, said rather than silently dropped."""

from raeae.storage import list_files, list_images, skipped_note


def test_listing_returns_images_sorted_and_names_every_file_it_skips(tmp_path):
    (tmp_path / "sub dir").mkdir()
    for name in ["b.png", "a.JPG", "sub dir/c.tiff", "d.jfif", "e.jp2", "._a.JPG", ".partial.png", "notes.txt",
                 "sub dir/scan", "sub dir/raw.dng"]:
        (tmp_path / name).write_bytes(b"x" * 3)
    images, skipped = list_files(str(tmp_path))
    assert [i["path"] for i in images] == [str(tmp_path / n) for n in ["a.JPG", "b.png", "d.jfif", "e.jp2",
                                                                         "sub dir/c.tiff"]]
    assert all(i["size"] == 3 and i["mtime"] > 0 for i in images)
    assert skipped == sorted(str(tmp_path / n) for n in ["._a.JPG", ".partial.png", "notes.txt", "sub dir/scan",
                                                         "sub dir/raw.dng"])
    assert list_images(str(tmp_path)) == images
    note = skipped_note(skipped)
    assert note.startswith("5 other file(s) skipped, not images by name or hidden (._a.JPG, .partial.png, "
                           "notes.txt, ...); images end in .png .jpg")
    assert skipped_note([]) == ""


def test_a_single_file_lists_itself(tmp_path):
    (tmp_path / "one.png").write_bytes(b"x")
    assert [i["path"] for i in list_images(str(tmp_path / "one.png"))] == [str(tmp_path / "one.png")]


def test_the_docs_name_exactly_the_extensions_that_are_images():
    from pathlib import Path

    from raeae.storage import IMAGE_EXTENSIONS

    docs = Path(__file__).resolve().parents[1] / "docs" / "images.md"
    assert f"`{' '.join(IMAGE_EXTENSIONS)}`, any case" in " ".join(docs.read_text().split())
