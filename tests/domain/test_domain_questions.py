"""Legacy question parsing, keyword categories, value types and the boolean vocabulary."""

from __future__ import annotations

import pytest

from inference_svc.domain.categories import Category, categorise, is_negative_expected
from inference_svc.domain.errors import ErrorKind, InspectionError, Reason
from inference_svc.domain.models import Question
from inference_svc.domain.questions import parse_legacy_questions
from inference_svc.domain.vocabulary import (
    ValueType,
    boolean_pair,
    boolean_truth,
    normalise_boolean,
    opposite_boolean,
    value_type,
)

BRAND = Question("Brand", "Is the brand visible?", "Yes", True)
COLOUR = Question("Colour", "What is the colour?", "Red", False)


@pytest.mark.parametrize(
    "text",
    [
        '{"Question": [{"Type": "Brand", "Label": "Is the brand visible?", "ValueToCheck": "Yes",'
        ' "IsMandatory": "Yes"}, {"Type": "Colour", "Label": "What is the colour?",'
        ' "ValueToCheck": "Red", "IsMandatory": "No"}]}',
        "{'Question': [{'Type': 'Brand', 'Label': 'Is the brand visible?', 'ValueToCheck': 'Yes',"
        " 'IsMandatory': 'Y'}, {'Type': 'Colour', 'Label': 'What is the colour?',"
        " 'ValueToCheck': 'Red', 'IsMandatory': 'N'}]}",
        "{'Question': [{'Type': 'Brand', 'Label': 'Is the brand visible?', 'ValueToCheck': 'Yes',"
        " 'IsMandatory': True}, {'Type': 'Colour', 'Label': 'What is the colour?',"
        " 'ValueToCheck': 'Red', 'IsMandatory': False}]}",
        '[{"Type": "Brand", "Label": "Is the brand visible?", "ValueToCheck": "Yes",'
        ' "IsMandatory": true}, {"Type": "Colour", "Label": "What is the colour?",'
        ' "ValueToCheck": "Red", "IsMandatory": "false"}]',
        '{"questions": [{"type": "Brand", "label": "Is the brand visible?", "value_to_check":'
        ' "Yes", "is_mandatory": "yes"}, {"type": "Colour", "label": "What is the colour?",'
        ' "value_to_check": "Red", "is_mandatory": 0}]}',
        '  {"Question": [{"Type": "Brand", "Label": " Is the brand visible? ", "ValueToCheck":'
        ' "Yes", "IsMandatory": "TRUE"}, {"Type": "Colour", "Label": "What is the colour?",'
        ' "ValueToCheck": "Red"}]}  ',
    ],
    ids=["json", "single-quotes", "python-literal", "bare-list", "snake-case", "defaults"],
)
def test_legacy_forms_parse_to_the_same_questions(text: str) -> None:
    assert parse_legacy_questions(text) == [BRAND, COLOUR]


def test_legacy_python_literal_keeps_apostrophes() -> None:
    text = "{'Question': [{'Type': 'Brand', 'Label': \"Is the vendor's logo visible?\","
    text += " 'ValueToCheck': 'Yes', 'IsMandatory': 'Yes'}]}"
    assert parse_legacy_questions(text) == [
        Question("Brand", "Is the vendor's logo visible?", "Yes", True)
    ]


def test_legacy_numbers_become_text() -> None:
    text = '{"Question": [{"Type": "Quantity", "Label": "How many?", "ValueToCheck": 2}]}'
    assert parse_legacy_questions(text)[0].value_to_check == "2"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("{not json at all", "not valid JSON"),
        ('{"Question": []}', "no questions"),
        ('{"Something": 1}', "expected"),
        ('{"Question": "Is it red?"}', "must be a list"),
        ('{"Question": [{"Type": "Brand", "ValueToCheck": "Yes"}]}', "Question[0]: Label"),
        ('{"Question": ["just text"]}', "Question[0]: must be an object"),
        ('{"Question": [{"Label": "x", "IsMandatory": "sometimes"}]}', "IsMandatory"),
        ('{"Question": [{"Label": {"nested": 1}}]}', "Label must be a string"),
        ("[" * 5000 + "]" * 5000, "not valid JSON"),  # too deep
    ],
)
def test_broken_legacy_questions_are_questions_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InspectionError) as info:
        parse_legacy_questions(text)
    error = info.value
    assert error.kind is ErrorKind.INVALID_ARGUMENT
    assert error.reason is Reason.QUESTIONS_INVALID
    assert error.violations
    assert all(v.field == "legacy_questions_json" for v in error.violations)
    assert fragment in error.message


def test_every_bad_question_is_reported() -> None:
    text = '{"Question": [{"Label": ""}, {"Label": "ok"}, {"Type": "x"}]}'
    with pytest.raises(InspectionError) as info:
        parse_legacy_questions(text)
    descriptions = [v.description for v in info.value.violations]
    assert descriptions[0].startswith("Question[0]")
    assert descriptions[1].startswith("Question[2]")


@pytest.mark.parametrize(
    ("type_", "label", "expected"),
    [
        ("Damage", "Is the product damaged?", Category.DAMAGE),
        ("", "Are there any scratches or dents?", Category.DAMAGE),
        ("Brand", "Is the brand label torn?", Category.DAMAGE),
        ("", "Does the product look used?", Category.USAGE),
        ("Usage", "Any signs of use?", Category.USAGE),
        ("", "Does the SKU match?", Category.SKU),
        ("", "Is the model number correct?", Category.SKU),
        ("", "Is the MRP printed?", Category.PRICE),
        ("", "Is the seal intact?", Category.SEAL),
        ("", "Is the box unopened?", Category.SEAL),
        ("", "How many units are there?", Category.QUANTITY),
        ("", "Quantity", Category.QUANTITY),
        ("", "Is the brand visible?", Category.BRAND),
        ("", "Is the logo correct?", Category.BRAND),
        ("", "What is the colour?", Category.COLOUR),
        ("", "Is the color blue?", Category.COLOUR),
        ("", "Is the size XL?", Category.SIZE),
        ("", "Is the original packaging present?", Category.PACKAGING),
        ("", "Is the price tag attached?", Category.PRICE),
        ("", "Are the tags attached?", Category.LABEL),
        ("", "Is the print pattern the same?", Category.DESIGN),
        ("", "Is the product category footwear?", Category.CATEGORY),
        ("", "Does the product match the listing?", Category.PRODUCT_MATCHING),
        ("", "Is it the same product?", Category.PRODUCT_MATCHING),
        ("Colour", "Check this", Category.COLOUR),  # type used when the label says nothing
        ("", "Is the house key included?", Category.GENERAL),  # "use" is not in "house"
        ("", "Is the rating accurate?", Category.GENERAL),  # "rate" is not in "accurate"
        ("", "Anything else?", Category.GENERAL),
    ],
)
def test_categorise(type_: str, label: str, expected: Category) -> None:
    assert categorise(Question(type_, label, "Yes", False)) is expected


def test_negative_expected_is_damage_and_usage() -> None:
    assert is_negative_expected(Question("", "Is it damaged?", "No", True))
    assert is_negative_expected(Question("", "Is it used?", "No", True))
    assert not is_negative_expected(BRAND)


@pytest.mark.parametrize(
    ("type_", "value", "expected"),
    [
        ("Brand", "Yes", ValueType.BOOLEAN),
        ("Text", "y", ValueType.BOOLEAN),
        ("", "FALSE", ValueType.BOOLEAN),
        ("Boolean", "", ValueType.BOOLEAN),
        ("Quantity", "2", ValueType.NUMERIC),
        ("Number", "", ValueType.NUMERIC),
        ("", "2.5", ValueType.NUMERIC),
        ("", "1,200", ValueType.NUMERIC),
        ("Dropdown", "Footwear", ValueType.CATEGORY),
        ("Category", "Footwear", ValueType.CATEGORY),
        ("Colour", "Red", ValueType.TEXT),
        ("Text", "2 pcs", ValueType.TEXT),
    ],
)
def test_value_type(type_: str, value: str, expected: ValueType) -> None:
    assert value_type(Question(type_, "q", value, False)) is expected


@pytest.mark.parametrize(
    ("value", "opposite"),
    [
        ("Yes", "No"),
        ("No", "Yes"),
        ("yes", "no"),
        ("YES", "NO"),
        ("Y", "N"),
        ("n", "y"),
        ("true", "false"),
        ("True", "False"),
        ("TRUE", "FALSE"),
        ("false", "true"),
        (" No ", "Yes"),
    ],
)
def test_opposite_boolean_keeps_vocabulary(value: str, opposite: str) -> None:
    assert opposite_boolean(value) == opposite


@pytest.mark.parametrize("value", ["Red", "", "2", "maybe"])
def test_opposite_boolean_rejects_non_booleans(value: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        opposite_boolean(value)


@pytest.mark.parametrize(
    ("answer", "like", "expected"),
    [
        ("yes", "Y", "Y"),
        ("No", "y", "n"),
        ("true", "Yes", "Yes"),
        (True, "No", "Yes"),
        (False, "TRUE", "FALSE"),
        ("Yes.", "True", "True"),
        ("No, the box is torn", "Y", "N"),
        ("N", "Yes", "No"),
        ("yes", "Red", "Yes"),  # value to check not boolean: Yes/No
        ("Red", "Yes", "Red"),  # not a boolean answer: unchanged
        ("  maybe ", "Yes", "maybe"),
    ],
)
def test_normalise_boolean(answer: object, like: str, expected: str) -> None:
    assert normalise_boolean(answer, like=like) == expected


def test_boolean_helpers() -> None:
    assert boolean_pair("y") == ("y", "n")
    assert boolean_pair("False") == ("True", "False")
    assert boolean_pair("Red") == ("Yes", "No")
    assert boolean_truth("Not sure") is None
    assert boolean_truth("noted") is None
