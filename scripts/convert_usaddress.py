#!/usr/bin/env python
"""Build Whetstone's bundled demo data from the hand-labelled US addresses in the `usaddress`
source distribution (training/labeled.xml, MIT licence).

Get the sdist without building it (its build needs parserator, which needs lxml from source):

    pip download --no-deps --no-binary usaddress --no-build-isolation usaddress==0.5.16 -d /tmp/usaddr
    python scripts/convert_usaddress.py --sdist /tmp/usaddr

Beside the JSONL file (`addresses.jsonl`) it writes `addresses.schema.json`, the JSON Schema
of the references, and `NOTICE-usaddress.txt`, the upstream licence and the data's origin.

Each `<AddressString>` becomes one row `{"id", "input", "reference"}`:
- input: the address as written. labeled.xml keeps the raw string in the element texts and
  tails, so joining them reproduces it; only the whitespace at the two ends is dropped (the
  XML's indentation before `</AddressString>`). Newlines inside an address are kept: several
  addresses were labelled from multi-line text.
- reference: one snake_case key per label present. A label's tokens are joined with one space
  in order (a name split over tokens, "Salt Lake City", reads as written), then `,` and `;`
  at the value's ends are dropped: they separate fields, they are never part of one. Everything
  else is kept verbatim ("St.", "#", "&", "(m/c"), since a period or a hash can carry meaning
  and the value should stay a substring of the input.
- `NotAddress` tokens are left out of the reference: the labellers used them for text that is
  no part of the address ("According to Internet:"), so a model should learn to skip it.
- Exact duplicates (same input, same reference) are kept once, at their first position.
- id: `usaddress-NNNN`, NNNN being the 1-based position of the `<AddressString>` in
  labeled.xml, so every row traces back to its source element and ids never shift.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

SDIST_VERSION = "0.5.16"
LABELED = "training/labeled.xml"
LICENSE = "LICENSE"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "whetstone" / "data" / "addresses.jsonl"

# usaddress label -> reference key, with what the key means (it becomes the schema's
# description). An explicit table rather than a CamelCase converter, so that a label we have
# never seen stops the conversion instead of inventing a key. None: left out (see above).
FIELDS: dict[str, tuple[str, str] | None] = {
    "Recipient": ("recipient", "person or organisation the mail is for, with 'attn:', 'c/o'"),
    "AddressNumberPrefix": ("address_number_prefix", "text before the house number"),
    "AddressNumber": ("address_number", "house or building number"),
    "AddressNumberSuffix": ("address_number_suffix", "letter or fraction after the number"),
    "StreetNamePreModifier": ("street_name_pre_modifier", "word before the street name, 'Old'"),
    "StreetNamePreDirectional": ("street_name_pre_directional", "direction before the name"),
    "StreetNamePreType": ("street_name_pre_type", "street type before the name, 'Avenue' H"),
    "StreetName": ("street_name", "the street's name"),
    "StreetNamePostType": ("street_name_post_type", "street type after the name, 'St'"),
    "StreetNamePostDirectional": ("street_name_post_directional", "direction after the name"),
    "StreetNamePostModifier": ("street_name_post_modifier", "word after the type, 'Ext'"),
    "IntersectionSeparator": ("intersection_separator", "'&' or 'and' between two streets"),
    "CornerOf": ("corner_of", "'Corner of', 'Jct' before an intersection"),
    "LandmarkName": ("landmark_name", "named place, 'Municipal Airport'"),
    "BuildingName": ("building_name", "named building"),
    "OccupancyType": ("occupancy_type", "unit type, 'Suite', 'Apt', 'Floor'"),
    "OccupancyIdentifier": ("occupancy_identifier", "unit number"),
    "SubaddressType": ("subaddress_type", "other sub-unit type, 'Mail Code', 'Room'"),
    "SubaddressIdentifier": ("subaddress_identifier", "other sub-unit number"),
    "USPSBoxType": ("usps_box_type", "'PO Box' and the like"),
    "USPSBoxID": ("usps_box_id", "box number"),
    "USPSBoxGroupType": ("usps_box_group_type", "'Rural Route', 'PSC' and the like"),
    "USPSBoxGroupID": ("usps_box_group_id", "route or group number"),
    "PlaceName": ("place_name", "city or town"),
    "StateName": ("state_name", "state, as written ('IL', 'Illinois')"),
    "ZipCode": ("zip_code", "ZIP code, as written (may include the +4 part)"),
    "ZipPlus4": ("zip_plus4", "the +4 part of the ZIP code when written apart"),
    "CountryName": ("country_name", "country"),
    "NotAddress": None,
}
SEPARATORS = ",;"


class ConvertError(Exception):
    """The sdist or labeled.xml is not what this script expects."""


def parse_labeled_xml(xml: str | bytes) -> list[dict[str, Any]]:
    """Rows `{"id", "input", "reference"}` from labeled.xml's text, in file order,
    exact duplicates dropped."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ConvertError(f"{LABELED}: not valid XML ({e})") from None
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, elem in enumerate(root, start=1):
        where = f"{LABELED}: <AddressString> #{n}"
        if elem.tag != "AddressString":
            raise ConvertError(f"{where}: expected <AddressString>, found <{elem.tag}>")
        row = {"id": f"usaddress-{n:04d}", **parse_address(elem, where)}
        key = json.dumps([row["input"], row["reference"]], sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def parse_address(elem: ET.Element, where: str) -> dict[str, Any]:
    raw = [elem.text or ""]
    tokens: dict[str, list[str]] = {}
    for tok in elem:
        if len(tok):
            raise ConvertError(f"{where}: <{tok.tag}> has child elements; labels are flat")
        if tok.tag not in FIELDS:
            raise ConvertError(f"{where}: unknown label <{tok.tag}> (add it to FIELDS)")
        raw += [tok.text or "", tok.tail or ""]
        field = FIELDS[tok.tag]
        text = (tok.text or "").strip()
        if field is not None and text:
            tokens.setdefault(field[0], []).append(text)
    reference = {}
    for key, parts in tokens.items():
        value = " ".join(parts).strip(SEPARATORS + " ")
        if value:
            reference[key] = value
    text = "".join(raw).strip()
    if not text:
        raise ConvertError(f"{where}: empty address")
    if not reference:
        raise ConvertError(f"{where}: no labelled field in {text!r}")
    return {"input": text, "reference": reference}


def schema_for(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON Schema of the references: every key seen, all strings, nothing else allowed.
    Properties follow FIELDS' order, the order of the parts in a written address."""
    seen = {k for r in rows for k in r["reference"]}
    props = {
        key: {"type": "string", "description": desc}
        for key, desc in (f for f in FIELDS.values() if f is not None)
        if key in seen
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "US address parts",
        "description": "The labelled parts of one US address, values as written in it.",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }


def notice(license_text: str) -> str:
    return (
        "addresses.jsonl and addresses.schema.json are derived from training/labeled.xml in\n"
        f"the source distribution of usaddress {SDIST_VERSION}\n"
        f"(https://pypi.org/project/usaddress/{SDIST_VERSION}/, "
        "https://github.com/datamade/usaddress),\n"
        "converted by scripts/convert_usaddress.py. usaddress is distributed under the\n"
        "following licence, reproduced from its LICENSE file:\n\n" + license_text.rstrip() + "\n"
    )


def read_sdist(path: Path) -> tuple[bytes, str]:
    """(labeled.xml bytes, LICENSE text) from an sdist .tar.gz, a folder holding one, or the
    folder it was extracted to."""
    if path.is_dir():
        if (path / LABELED).exists():
            return (path / LABELED).read_bytes(), (path / LICENSE).read_text()
        tarballs = sorted(path.glob(f"usaddress-{SDIST_VERSION}.tar.gz"))
        if not tarballs:
            raise ConvertError(
                f"{path}: holds neither {LABELED} nor usaddress-{SDIST_VERSION}.tar.gz"
            )
        path = tarballs[0]
    if not path.exists():
        raise ConvertError(f"{path}: no such file")
    with tarfile.open(path) as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if "/" in m.name}
        out = []
        for name in (LABELED, LICENSE):
            member = members.get(name)
            f = tar.extractfile(member) if member else None
            if f is None:
                raise ConvertError(f"{path}: has no {name}")
            out.append(f.read())
    return out[0], out[1].decode()


def write_text(path: Path, text: str) -> None:
    # Temp file then rename: a failed run leaves the committed files as they were.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sdist",
        type=Path,
        default=Path("/tmp/usaddr"),
        help=f"usaddress-{SDIST_VERSION}.tar.gz, a folder holding it, or its extracted folder",
    )
    ap.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="JSONL file to write")
    args = ap.parse_args(argv)
    try:
        xml, license_text = read_sdist(args.sdist)
        rows = parse_labeled_xml(xml)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(
        out,
        "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows),
    )
    write_text(
        out.with_name(out.name.removesuffix(".jsonl") + ".schema.json"),
        json.dumps(schema_for(rows), ensure_ascii=False, indent=2) + "\n",
    )
    write_text(out.with_name("NOTICE-usaddress.txt"), notice(license_text))
    print(f"wrote {len(rows)} addresses to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
