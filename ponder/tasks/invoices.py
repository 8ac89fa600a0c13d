"""Synthetic invoices for field extraction: `ponder make-data invoices --out DIR`.

Each document is an invoice, receipt, statement or export in one of several
layouts, with US (1,234.56), European (1.234,56) or space-grouped (1 234,56)
numbers, dates in many formats, currencies as symbols or ISO codes, and the
distractors real documents have: phone, PO, order and customer numbers, a
due date beside the invoice date, the customer beside the vendor, a previous
balance, cash tendered and change, line amounts. In some documents the
subtotal, the tax or the total is not printed and must be computed from the
line items and the tax rate.

The gold answer always has the same schema (`SCHEMA`): vendor, invoice_number,
date (YYYY-MM-DD), currency (ISO 4217), subtotal, tax (0 when none applies)
and total. Money is computed in Decimal cents, tax rounded half up, so
subtotal + tax = total exactly.

Splits are by layout: the layouts in `HELD_OUT_LAYOUTS` appear only in the
test split, so an evaluation there measures extraction from layouts training
never saw; a test document is also never a training document. Every example
is a pure function of (seed, split, index).

The files are the "bring your own task" format (one JSON object a line:
prompt = the raw document, answer = the gold object, split, and info fields
layout / layout_group / amounts / number_format), graded by
recipes/invoice_grader.toml.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from ponder.core import config as C
from ponder.core.config import ConfigError, check_choices, option
from ponder.verifiers.tools import calculate

FIELDS = ("vendor", "invoice_number", "date", "currency", "subtotal", "tax", "total")
SCHEMA = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "minLength": 1},
        "invoice_number": {"type": "string", "minLength": 1},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "currency": {"type": "string", "pattern": "^[A-Za-z]{3}$"},
        "subtotal": {"type": "number"},
        "tax": {"type": "number"},
        "total": {"type": "number"},
    },
    "required": list(FIELDS),
    "additionalProperties": False,
}
TRAIN_LAYOUTS = ("letterhead", "keyvalue", "table", "receipt", "erp", "letter")
HELD_OUT_LAYOUTS = ("email", "ocr", "statement")
LAYOUTS = TRAIN_LAYOUTS + HELD_OUT_LAYOUTS
NUMBER_FORMATS = ("us", "eu", "space")
CENT = Decimal("0.01")

# number format -> (Faker locales, currencies) that go with it
LOCALES = {
    "us": (("en_US", "en_GB", "en_CA"), ("USD", "USD", "GBP", "CAD", "AUD")),
    "eu": (("de_DE", "nl_NL", "it_IT", "es_ES"), ("EUR", "EUR", "EUR", "CHF", "DKK")),
    "space": (("fr_FR", "sv_SE"), ("EUR", "EUR", "SEK", "CHF")),
}
# ISO code -> symbols a document may print instead (empty: only the code is unambiguous)
SYMBOLS = {"USD": ("$", "US$"), "GBP": ("£",), "EUR": ("€",), "CAD": ("C$", "CA$"), "AUD": ("A$", "AU$"),
           "CHF": ("CHF", "Fr."), "DKK": (), "SEK": ()}
TAX_RATES = {"us": ("0", "5", "6.25", "7.25", "8.875", "10"), "eu": ("0", "7", "9", "19", "21", "25"),
             "space": ("0", "5.5", "10", "20", "25")}
ITEMS = ("Consulting services", "Software licence", "Office chairs", "Printer toner", "Cloud hosting (monthly)",
         "Website maintenance", "Shipping and handling", "Copy paper A4", "Network cables", "Training workshop",
         "Graphic design", "Legal review", "Laptop stand", "Cleaning service", "Translation (per page)",
         "Coffee beans 1kg", "Catering", "Data backup plan", "Repair labour", "Spare parts kit")
SHOP_ITEMS = ("Milk 1L", "Bread", "Apples", "Coffee", "Batteries AA", "Notebook", "Pens (10)", "Sandwich",
              "Water 0.5L", "Chocolate", "Shampoo", "USB stick", "Tea", "Cheese", "Newspaper")
MONTH_FORMATS = ("%B %d, %Y", "%d %B %Y", "%d-%b-%Y", "%b %d, %Y", "%d %b %Y")
NUMERIC_DATES = {"us": ("%m/%d/%Y",), "eu": ("%d.%m.%Y",), "space": ("%d.%m.%Y", "%d/%m/%Y")}
# which amounts a "computed" document leaves out (each set can be recovered from what is printed)
HIDDEN_SETS = (("total",), ("tax", "total"), ("subtotal",), ("subtotal", "tax", "total"), ("tax",))


@dataclass(frozen=True)
class Item:
    description: str
    qty: Decimal
    unit: Decimal

    @property
    def amount(self) -> Decimal:
        return (self.qty * self.unit).quantize(CENT, ROUND_HALF_UP)


@dataclass(frozen=True)
class Invoice:
    """One invoice's facts and how its document prints them."""
    layout: str
    number_format: str
    vendor: str
    vendor_address: str
    vendor_phone: str
    vendor_email: str
    vat_id: str
    customer: str
    customer_address: str
    contact: str  # a person at the customer (email greetings)
    invoice_number: str
    po_number: str
    order_number: str
    customer_number: str
    date: dt.date
    due_date: dt.date
    order_date: dt.date
    currency: str
    money_style: str  # symbol-before | symbol-after | code-before | code-after
    symbol: str
    date_format: str
    items: tuple[Item, ...]
    tax_rate: Decimal  # percent
    hidden: tuple[str, ...]  # amounts not printed
    previous_balance: Decimal
    cash: Decimal  # receipts: cash tendered (0 = paid by card)
    extras: dict = field(default_factory=dict, compare=False)

    @property
    def subtotal(self) -> Decimal:
        return sum((it.amount for it in self.items), Decimal("0.00"))

    @property
    def tax(self) -> Decimal:
        return (self.subtotal * self.tax_rate / 100).quantize(CENT, ROUND_HALF_UP)

    @property
    def total(self) -> Decimal:
        return self.subtotal + self.tax

    @property
    def amounts(self) -> str:
        return "computed" if self.hidden else "printed"

    def gold(self) -> dict:
        return {"vendor": self.vendor, "invoice_number": self.invoice_number, "date": self.date.isoformat(),
                "currency": self.currency, "subtotal": float(self.subtotal), "tax": float(self.tax),
                "total": float(self.total)}


# -- formatting -----------------------------------------------------------------------------------
def format_number(x: Decimal, number_format: str) -> str:
    """Two decimals with the format's separators.

    >>> [format_number(Decimal("-1234567.5"), f) for f in NUMBER_FORMATS]
    ['-1,234,567.50', '-1.234.567,50', '-1 234 567,50']
    """
    text = f"{abs(x):,.2f}"  # 1,234.56
    if number_format == "eu":
        text = text.replace(",", "_").replace(".", ",").replace("_", ".")
    elif number_format == "space":
        text = text.replace(",", " ").replace(".", ",")
    elif number_format != "us":
        raise ConfigError(f"number format {number_format!r} is not valid; choose one of: {', '.join(NUMBER_FORMATS)}")
    return ("-" if x < 0 else "") + text


def money(inv: Invoice, x: Decimal) -> str:
    n = format_number(x, inv.number_format)
    return {"symbol-before": f"{inv.symbol}{n}", "symbol-after": f"{n} {inv.symbol}",
            "code-before": f"{inv.currency} {n}", "code-after": f"{n} {inv.currency}"}[inv.money_style]


def num(inv: Invoice, x: Decimal) -> str:
    return format_number(x, inv.number_format)


def day(inv: Invoice, d: dt.date) -> str:
    return d.strftime(inv.date_format)


def rate(inv: Invoice) -> str:
    r = f"{inv.tax_rate.normalize():f}"
    return r.replace(".", ",") if inv.number_format != "us" else r


def qty(inv: Invoice, q: Decimal) -> str:
    return f"{q:f}" if q == q.to_integral() else format_number(q, inv.number_format)


def printed(inv: Invoice, name: str) -> bool:
    return name not in inv.hidden


def tax_label(inv: Invoice) -> str:
    word = "VAT" if inv.number_format != "us" else inv.extras.get("tax_word", "Sales tax")
    return f"{word} {rate(inv)}%"


# -- sampling -------------------------------------------------------------------------------------
_FAKERS: dict[str, object] = {}


def _faker(locale: str, seed: int):
    from faker import Faker

    if locale not in _FAKERS:
        _FAKERS[locale] = Faker(locale)
        for provider in _FAKERS[locale].providers:
            # it_IT builds its city list from a set, so its order (and `city()`) followed
            # PYTHONHASHSEED: sorted, every document is the same in every process
            if isinstance(getattr(provider, "cities", None), list):
                provider.cities = sorted(set(provider.cities))
    fake = _FAKERS[locale]
    fake.seed_instance(seed)
    return fake


def _one_line(text: str) -> str:
    return ", ".join(part.strip() for part in text.splitlines() if part.strip())


def _invoice_number(rng: random.Random, year: int) -> str:
    n = rng.randint(100, 99999)
    return rng.choice((f"INV-{year}-{n:05d}", f"{n}", f"F{year}/{n:04d}", f"RE-{n:06d}",
                       f"{rng.choice('ABKMST')}-{n}", f"{year % 100:02d}{n:05d}", f"INV{n}"))


def _items(rng: random.Random, layout: str) -> tuple[Item, ...]:
    if layout == "receipt":
        names = rng.sample(SHOP_ITEMS, rng.randint(2, 4))
        return tuple(Item(n, Decimal(rng.randint(1, 3)), Decimal(rng.randint(49, 1999)) / 100) for n in names)
    names = rng.sample(ITEMS, rng.randint(1, 3))
    out = []
    for n in names:
        q = Decimal(rng.choice((1, 1, 2, 3, 5, 10, 12))) if rng.random() < 0.8 else Decimal(rng.randint(2, 30)) / 2
        out.append(Item(n, q, Decimal(rng.randint(500, 250000)) / 100))
    return tuple(out)


def _dates(rng: random.Random) -> tuple[dt.date, dt.date, dt.date]:
    date = dt.date(2021, 1, 1) + dt.timedelta(days=rng.randint(0, 5 * 365))
    return date, date + dt.timedelta(days=rng.choice((7, 14, 15, 30, 30, 45, 60))), \
        date - dt.timedelta(days=rng.randint(3, 40))


def _money_style(rng: random.Random, currency: str, number_format: str) -> tuple[str, str]:
    symbols = SYMBOLS[currency]
    if symbols and rng.random() < 0.6:
        before = number_format == "us" if rng.random() < 0.8 else number_format != "us"
        return ("symbol-before" if before else "symbol-after"), rng.choice(symbols)
    return rng.choice(("code-before", "code-after")), currency


def make_invoice(rng: random.Random, layout: str, computed_share: float = 0.3) -> Invoice:
    """A random invoice to be printed in `layout`."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} is not valid; choose one of: {', '.join(LAYOUTS)}")
    number_format = rng.choice(NUMBER_FORMATS)
    locales, currencies = LOCALES[number_format]
    fake = _faker(rng.choice(locales), rng.getrandbits(32))
    currency = rng.choice(currencies)
    style, symbol = _money_style(rng, currency, number_format)
    date, due, ordered = _dates(rng)
    hidden: tuple[str, ...] = rng.choice(HIDDEN_SETS) if rng.random() < computed_share else ()
    tax_rate = Decimal(rng.choice(TAX_RATES[number_format]))
    if hidden and tax_rate == 0:
        tax_rate = Decimal(TAX_RATES[number_format][-1])  # a hidden amount of a tax-free invoice is trivial
    date_formats = MONTH_FORMATS + NUMERIC_DATES[number_format] + ("%Y-%m-%d",)
    return Invoice(
        layout=layout, number_format=number_format, vendor=fake.company(),
        vendor_address=_one_line(f"{fake.street_address()}\n{fake.postcode()} {fake.city()}"),
        vendor_phone=fake.phone_number(), vendor_email=fake.company_email(),
        vat_id=f"{fake.country_code()}{rng.randint(10**8, 10**9 - 1)}",
        customer=fake.company() if rng.random() < 0.7 else fake.name(),
        customer_address=_one_line(f"{fake.street_address()}\n{fake.postcode()} {fake.city()}"),
        contact=fake.first_name(), invoice_number=_invoice_number(rng, date.year),
        po_number=f"PO-{rng.randint(10000, 99999)}", order_number=f"SO{rng.randint(100000, 999999)}",
        customer_number=f"C{rng.randint(1000, 99999)}", date=date, due_date=due, order_date=ordered,
        currency=currency, money_style=style, symbol=symbol, date_format=rng.choice(date_formats),
        items=_items(rng, layout), tax_rate=tax_rate, hidden=hidden,
        previous_balance=Decimal(rng.randint(0, 500000)) / 100
        if layout == "statement" or (layout != "receipt" and rng.random() < 0.15) else Decimal(0),
        cash=Decimal(0), extras={"tax_word": rng.choice(("Sales tax", "Tax")), "signer": fake.name()},
    )


def with_cash(inv: Invoice, rng: random.Random) -> Invoice:
    """A receipt paid in cash: tendered rounds the total up to a note (the change is a distractor)."""
    from dataclasses import replace

    note = next(n for n in (5, 10, 20, 50, 100, 200, 500, 1000, 10**6) if n >= inv.total)
    return replace(inv, cash=Decimal(note if rng.random() < 0.7 else note * 2).quantize(CENT))


# -- the pieces every layout prints ---------------------------------------------------------------
SUBTOTAL_LABELS = ("Subtotal", "Sub-total", "Net amount", "Total excl. tax", "Net total", "Amount before tax")
TOTAL_LABELS = ("Total", "Total due", "Amount due", "Grand total", "Total incl. tax", "Invoice total")
TOTAL_WITH_BALANCE = ("Invoice total", "Current charges", "Total this invoice")  # "due" is the balance then
NUMBER_LABELS = ("Invoice No.", "Invoice number", "Invoice #", "Inv. no.", "Invoice ID", "Document no.")
DATE_LABELS = ("Invoice date", "Date", "Issue date", "Date of issue", "Billing date")


def amount_lines(inv: Invoice, rng: random.Random, money_fn=None) -> list[tuple[str, str]]:
    """(label, value) for the printed subtotal, tax (or tax rate) and total, plus any balance lines."""
    fmt = money_fn or (lambda x: money(inv, x))
    out = []
    if printed(inv, "subtotal"):
        out.append((rng.choice(SUBTOTAL_LABELS), fmt(inv.subtotal)))
    if inv.tax_rate == 0:
        if rng.random() < 0.6:
            out.append(rng.choice((("Tax", fmt(Decimal("0.00"))), ("VAT", "exempt"), ("Tax (0%)", fmt(Decimal(0))))))
    elif printed(inv, "tax"):
        out.append((tax_label(inv), fmt(inv.tax)))
    else:
        out.append(("Tax rate" if inv.number_format == "us" else "VAT rate", f"{rate(inv)}%"))
    balance = inv.previous_balance > 0
    if printed(inv, "total"):
        out.append((rng.choice(TOTAL_WITH_BALANCE if balance else TOTAL_LABELS), fmt(inv.total)))
    if balance:
        out.append(("Previous balance", fmt(inv.previous_balance)))
        out.append(("Balance due", fmt(inv.previous_balance + inv.total)))
    return out


def item_rows(inv: Invoice) -> list[tuple[str, str, str, str]]:
    return [(it.description, qty(inv, it.qty), num(inv, it.unit), num(inv, it.amount)) for it in inv.items]


def header_fields(inv: Invoice, rng: random.Random) -> list[tuple[str, str]]:
    """The invoice number and date with their distractors (due date, PO, order and customer numbers), shuffled."""
    rows = [(rng.choice(NUMBER_LABELS), inv.invoice_number), (rng.choice(DATE_LABELS), day(inv, inv.date))]
    extra = [(rng.choice(("Due date", "Payment due", "Due")), day(inv, inv.due_date)),
             (rng.choice(("PO number", "Your PO", "Purchase order")), inv.po_number),
             (rng.choice(("Order no.", "Sales order", "Order #")), inv.order_number),
             (rng.choice(("Customer no.", "Account", "Customer ID")), inv.customer_number),
             (rng.choice(("Order date", "Delivery date")), day(inv, inv.order_date))]
    rows += rng.sample(extra, rng.randint(1, 3))
    head, tail = rows[:2], rows[2:]
    rng.shuffle(tail)
    return head + tail if rng.random() < 0.6 else tail[:1] + head + tail[1:]


def dotted(label: str, value: str, width: int = 34) -> str:
    return f"{label} {'.' * max(2, width - len(label) - len(value))} {value}"


# -- layouts --------------------------------------------------------------------------------------
def render_letterhead(inv: Invoice, rng: random.Random, lab=lambda s: s) -> str:
    vendor = inv.vendor.upper() if rng.random() < 0.4 else inv.vendor
    lines = [vendor, f"{lab('Tel.')} {inv.vendor_phone}", lab(rng.choice(("INVOICE", "Invoice", "TAX INVOICE"))),
             f"{lab(rng.choice(('Bill to', 'Billed to', 'Customer')))}: {inv.customer}"]
    lines += [f"{lab(k)}: {v}" for k, v in header_fields(inv, rng)]
    lines += [f"{lab('Description'):<24}{lab('Qty'):>4}{lab('Price'):>11}{lab('Amount'):>11}"]
    lines += [f"{d:<24}{q:>4}{u:>11}{a:>11}" for d, q, u, a in item_rows(inv)]
    lines += [f"{lab(k)}: {v}" for k, v in amount_lines(inv, rng)]
    return "\n".join(lines)


def render_keyvalue(inv: Invoice, rng: random.Random) -> str:
    rows = [("Document type", "Invoice"), (rng.choice(("Vendor", "Supplier", "Seller", "Issued by")), inv.vendor),
            ("Vendor phone", inv.vendor_phone),
            (rng.choice(("Customer", "Buyer", "Bill to", "Sold to")), inv.customer)]
    rows += header_fields(inv, rng)
    if rng.random() < 0.5:
        rows.append(("Currency", inv.currency))
    sep = rng.choice((": ", " = ", " - "))
    lines = [f"{k}{sep}{v}" for k, v in rows]
    for i, (d, q, u, a) in enumerate(item_rows(inv), 1):
        lines.append(f"Line {i}{sep}{d}; qty {q}; price {u}; amount {a}")
    lines += [f"{k}{sep}{v}" for k, v in amount_lines(inv, rng)]
    return "\n".join(lines)


def _md_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def render_table(inv: Invoice, rng: random.Random) -> str:
    head = [(rng.choice(("Seller", "Vendor", "From")), inv.vendor), (rng.choice(("Buyer", "Customer", "To")),
            inv.customer)] + header_fields(inv, rng)
    lines = [f"# {rng.choice(('Invoice', 'INVOICE', 'Commercial invoice'))}", "", _md_row(("Field", "Value")),
             "|---|---|"] + [_md_row(r) for r in head]
    lines += ["", _md_row(("#", "Item", "Qty", "Unit", "Amount")), "|---|---|---|---|---|"]
    lines += [_md_row((str(i), d, q, u, a)) for i, (d, q, u, a) in enumerate(item_rows(inv), 1)]
    lines += [_md_row(("", "", "", k, v)) for k, v in amount_lines(inv, rng)]
    lines += [f"Questions? {inv.vendor_phone}"]
    return "\n".join(lines)


def render_receipt(inv: Invoice, rng: random.Random) -> str:
    width = 36
    if rng.random() < 0.6:
        inv = with_cash(inv, rng)
    lines = [inv.vendor.upper().center(width), f"Tel {inv.vendor_phone}".center(width), "-" * width,
             f"{rng.choice(('Receipt #', 'Receipt no.', 'Bon-Nr.', 'Trans #'))}: {inv.invoice_number}",
             f"Date: {day(inv, inv.date)} {rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}",
             "-" * width]
    for it in inv.items:
        lines.append(f"{it.description[:18]:<18} {qty(inv, it.qty)} x {num(inv, it.unit)}".ljust(width - 10)
                     + f"{num(inv, it.amount):>10}")
    lines.append("-" * width)
    for k, v in amount_lines(inv, rng, money_fn=lambda x: num(inv, x)):
        lines.append(f"{k.upper():<20}{v:>{width - 20}}")
    if inv.cash:
        lines += [f"{'CASH':<20}{num(inv, inv.cash):>{width - 20}}",
                  f"{'CHANGE':<20}{num(inv, inv.cash - inv.total):>{width - 20}}"]
    else:
        lines.append(f"{rng.choice(('VISA', 'MASTERCARD', 'DEBIT'))} ****{rng.randint(1000, 9999)}")
    lines += [f"All amounts in {inv.currency}", "*** Thank you for shopping! ***".center(width)]
    return "\n".join(lines)


def render_erp(inv: Invoice, rng: random.Random) -> str:
    sep = rng.choice((";", "|", "\t"))
    hdr = [("VENDOR_NAME", inv.vendor), ("VENDOR_ID", f"V{rng.randint(10000, 99999)}"),
           ("DOC_NO", inv.invoice_number), ("DOC_DATE", day(inv, inv.date)), ("DUE_DATE", day(inv, inv.due_date)),
           ("PO_REF", inv.po_number), ("CUST_NO", inv.customer_number), ("CUST_NAME", inv.customer),
           ("CURRENCY", inv.currency)]
    hdr = hdr[:1] + rng.sample(hdr[1:], len(hdr) - 1)
    lines = [sep.join(("EXPORT", f"ERP-FIN v{rng.randint(2, 9)}.{rng.randint(0, 9)}", "INVOICE_IN")),
             sep.join(("REC", "KEY", "VALUE"))] + [sep.join(("HDR", k, v)) for k, v in hdr]
    lines += [sep.join(("LIN", str(i), d, q, u, a)) for i, (d, q, u, a) in enumerate(item_rows(inv), 1)]
    keys = {"Tax rate": "TAX_RATE", "VAT rate": "TAX_RATE", "Previous balance": "PREV_BAL", "Balance due": "BAL_DUE"}
    for k, v in amount_lines(inv, rng, money_fn=lambda x: num(inv, x)):
        key = keys.get(k) or ("NET_AMT" if k in SUBTOTAL_LABELS else "GROSS_AMT" if k in TOTAL_LABELS
                              + TOTAL_WITH_BALANCE else "TAX_AMT")
        lines.append(sep.join(("TOT", key, v.rstrip("%"))))
    return "\n".join(lines)


def render_letter(inv: Invoice, rng: random.Random) -> str:
    city = inv.vendor_address.rsplit(" ", 1)[-1]
    lines = [inv.vendor, f"To: {inv.customer}", f"{city}, {day(inv, inv.date)}", f"Invoice {inv.invoice_number}",
             rng.choice(("Dear Sir or Madam,", f"Dear {inv.contact},")),
             f"as agreed (your order {inv.po_number} of {day(inv, inv.order_date)}) we invoice you as follows:"]
    lines += [f"{i}. {d}: {q} x {u} = {a}" for i, (d, q, u, a) in enumerate(item_rows(inv), 1)]
    lines += [f"{k}: {v}" for k, v in amount_lines(inv, rng)]
    lines += [f"Please pay by {day(inv, inv.due_date)}.", "Yours sincerely,", inv.extras.get("signer", inv.contact),
              inv.vendor]
    return "\n".join(lines)


def _sentence_amounts(inv: Invoice, rng: random.Random) -> str:
    """The amounts as running text (an email does not print a totals block)."""
    parts = [f"{k.lower() if k[:3] not in ('VAT', 'GST') else k} {v}" for k, v in amount_lines(inv, rng)]
    return "; ".join(parts).capitalize() + "."


def render_email(inv: Invoice, rng: random.Random) -> str:
    sent = inv.date + dt.timedelta(days=rng.randint(0, 3))
    lines = [f"From: {inv.vendor} Billing <{inv.vendor_email}>",
             f"To: {inv.contact} <accounts@{inv.customer_number.lower()}.example>",
             f"Sent: {sent.strftime('%a, %d %b %Y')} {rng.randint(7, 19):02d}:{rng.randint(0, 59):02d}",
             f"Subject: {rng.choice(('Invoice', 'Your invoice', 'New invoice'))} {inv.invoice_number}",
             f"Hi {inv.contact}, thanks for your order {inv.order_number} (PO {inv.po_number}). "
             f"Invoice {inv.invoice_number} was issued on {day(inv, inv.date)}:"]
    lines += [f"  - {d}, {q} x {u}: {a}" for d, q, u, a in item_rows(inv)]
    lines += [_sentence_amounts(inv, rng) + f" All amounts in {inv.currency}.",
              f"Payment is due on {day(inv, inv.due_date)}. Questions: {inv.vendor_phone}.", "Best regards,",
              f"{inv.extras.get('signer', inv.contact)}, {inv.vendor}"]
    return "\n".join(lines)


_OCR_SWAPS = {"l": "1", "I": "l", "O": "0", "o": "0", "S": "5", "B": "8", "e": "c", "a": "o", "t": "f", "i": ";"}


def ocr_noise(text: str, rng: random.Random, p: float = 0.12) -> str:
    """Scanner errors in a label: look-alike characters and stray spaces (never in the values)."""
    out = []
    for ch in text:
        r = rng.random()
        if ch in _OCR_SWAPS and r < p:
            out.append(_OCR_SWAPS[ch])
        elif ch.isalpha() and r > 1 - p / 3:
            out.append(ch + " ")
        else:
            out.append(ch)
    return "".join(out)


def render_ocr(inv: Invoice, rng: random.Random) -> str:
    text = render_letterhead(inv, rng, lab=lambda s: ocr_noise(s, rng))
    lines = []
    for line in text.split("\n"):
        if rng.random() < 0.2:
            lines.append(rng.choice(("|", "' .", "~ ~", "__", ":", "|  |")))
        lines.append(" " * rng.randint(0, 3) + line.replace(": ", rng.choice((": ", " : ", ":  ", " "))))
    lines.append(f"Page 1/{rng.randint(1, 2)}  scan {rng.randint(1000, 9999)}")
    return "\n".join(lines)


def render_statement(inv: Invoice, rng: random.Random) -> str:
    paid = (inv.previous_balance * Decimal(rng.choice((0, 0.5, 1)))).quantize(CENT)
    stated = inv.date + dt.timedelta(days=rng.randint(1, 10))
    lines = ["ACCOUNT STATEMENT", f"{inv.vendor} - {inv.vendor_phone}",
             f"Customer: {inv.customer} (account {inv.customer_number})", f"Statement date: {day(inv, stated)}",
             dotted("Previous balance", money(inv, inv.previous_balance))]
    if paid:
        lines.append(dotted(f"Payment received {day(inv, inv.order_date)}", money(inv, -paid)))
    lines += [f"New charges: invoice {inv.invoice_number} dated {day(inv, inv.date)} (PO {inv.po_number})"]
    lines += [f"   {d} ({q} @ {u}) {a}" for d, q, u, a in item_rows(inv)]
    no_balance = Invoice(**{**inv.__dict__, "previous_balance": Decimal(0)})
    lines += ["   " + dotted(k, v) for k, v in amount_lines(no_balance, rng)]
    lines += [dotted("Balance due", money(inv, inv.previous_balance - paid + inv.total)),
              f"Please pay by {day(inv, inv.due_date)}."]
    return "\n".join(lines)


RENDER = {"letterhead": render_letterhead, "keyvalue": render_keyvalue, "table": render_table,
          "receipt": render_receipt, "erp": render_erp, "letter": render_letter, "email": render_email,
          "ocr": render_ocr, "statement": render_statement}
assert tuple(RENDER) == LAYOUTS


# -- generic distractors for training documents -----------------------------------------------------
TITLES = ("ORIGINAL", "COPY", "DUPLICATE", "Page 1 of 1", "PAYMENT REMINDER", "PRO FORMA", "Customer copy",
          "DOCUMENT", "Remittance advice")
DEPARTMENTS = ("Billing", "Accounts", "Sales", "Finance", "Invoicing", "Accounts Receivable")


# Dates a document carries beside its issue date: labels a reader must not take for "the date"
# just because they say date (`Due date` and `Order date` are in every layout's header already).
OTHER_DATES = ("Printed", "Sent", "Generated", "Posted", "Exported", "Print date", "Posting date", "Report date",
               "Run date", "Mailing date", "Value date", "Date printed", "Scan date", "Entry date")
CONTACTS = ("Contact", "Reply to", "Sent by", "Questions", "Remit to", "Enquiries")


def contact_line(inv: Invoice, rng: random.Random) -> str:
    """A department's address line ("Reply to: Acme Billing <…>"): the vendor's name plus a word."""
    return f"{rng.choice(CONTACTS)}: {inv.vendor} {rng.choice(DEPARTMENTS)} <{inv.vendor_email}>"


def distractor_lines(inv: Invoice, rng: random.Random) -> tuple[list[str], list[str]]:
    """(lines for the top, lines for the header) that real documents carry and a reader must
    skip: a title or copy mark above the vendor, a department contact that is not the vendor's
    name, another dated event (printed, posted, mailed...) that is not the invoice date, a VAT id
    that is not the invoice number. No amount is ever added, so a hidden amount stays hidden."""
    top = [rng.choice(TITLES)] if rng.random() < 0.4 else []
    pool = [(0.5, contact_line(inv, rng)),
            (0.6, f"{rng.choice(OTHER_DATES)}: {day(inv, inv.date + dt.timedelta(days=rng.randint(1, 12)))}"),
            (0.4, f"{rng.choice(('VAT ID', 'Tax ID', 'VAT reg. no.'))}: {inv.vat_id}")]
    return top, [line for p, line in pool if rng.random() < p]


def with_distractors(doc: str, inv: Invoice, rng: random.Random) -> str:
    """`doc` with `distractor_lines` inserted: the title first, the others among the first lines."""
    top, header = distractor_lines(inv, rng)
    lines = doc.split("\n")
    for line in header:
        lines.insert(rng.randint(1, min(len(lines), 6)), line)
    return "\n".join(top + lines)


def with_rewrites(doc: str, inv: Invoice, rng: random.Random) -> str:
    """`doc` with the vendor's name and phone on one line (or the vendor named only at the
    end, a department's contact line on top), and the labelled invoice date written as a
    phrase instead ("Invoice X dated D"): the same facts in forms a reader must not learn to
    find by position or by label alone."""
    lines = doc.split("\n")
    for i, line in enumerate(lines[:3]):
        if line.strip().casefold() != inv.vendor.casefold():
            continue
        r = rng.random()
        if r < 0.45:
            lines[i] = f"{line.strip()}{rng.choice((' - ', ' | ', ', Tel. ', ' / '))}{inv.vendor_phone}"
        elif r < 0.75:  # the issuer named only at the end; on top a department's address line
            lines[i] = contact_line(inv, rng)
            signer = inv.extras.get("signer", inv.contact)
            lines.append(rng.choice((f"{signer}, {inv.vendor}", f"Issued by {inv.vendor}",
                                     f"Kind regards, {signer} ({inv.vendor})")))
        break
    date = day(inv, inv.date)
    for i, line in enumerate(lines):
        sep = next((s for s in (": ", " = ", " - ") if s in line), None)
        label, _, value = line.partition(sep) if sep else ("", "", "")
        if label in DATE_LABELS and value == date and rng.random() < 0.7:
            lines[i] = rng.choice((f"Issued on {date}", f"Invoice {inv.invoice_number} dated {date}",
                                   f"This invoice is dated {date}."))
    return "\n".join(lines)


# -- examples and files ---------------------------------------------------------------------------
def layouts_of(split: str) -> tuple[str, ...]:
    if split == "train":
        return TRAIN_LAYOUTS
    if split == "test":
        return HELD_OUT_LAYOUTS
    raise ConfigError(f"split {split!r} is not valid; choose one of: train, test")


SOLUTIONS = ("none", "calculator")


def worked_solution(inv: Invoice) -> str:
    """The gold completion for a model that runs the calculator tool: an amount the document
    leaves out is computed by a `<calc>` call from what it prints (the subtotal from the line
    amounts, the tax from the total or from the rate), and the total is always computed last
    as subtotal + tax -- one habit for every document, so the model never has to decide
    whether to call, and never copies a long total digit by digit (a 135M model's most common
    slip on noisy scans). The calculator's `<output>` follows each call, then the JSON answer;
    a tax from the rate is exact in the output and rounded to the cent in the answer.

    >>> rng = random.Random("doc")
    >>> inv = next(i for i in (make_invoice(rng, "email", 0.0) for _ in range(5)))
    >>> worked_solution(inv).startswith(f"<think><calc>{inv.subtotal:f}+{inv.tax:f}</calc><output>{inv.total:f}")
    True
    """
    answer = json.dumps(inv.gold())  # as the JSONL task writes a line's answer object
    calls = []
    if "subtotal" in inv.hidden:
        calls.append("+".join(f"{it.amount:f}" for it in inv.items))
    if "tax" in inv.hidden:
        calls.append(f"{inv.subtotal:f}*{inv.tax_rate.normalize():f}/100" if "total" in inv.hidden
                     else f"{inv.total:f}-{inv.subtotal:f}")
    calls.append(f"{inv.subtotal:f}+{inv.tax:f}")
    work = "".join(f"<calc>{expr}</calc><output>{calculate(expr)}</output>" for expr in calls)
    return f"<think>{work}</think>{answer}"


def example(seed: int, split: str, index: int, computed_share: float = 0.3, distractors: float = 0.0,
            rewrites: float = 0.0, solutions: str = "none") -> dict:
    """Line `index` of `split`: a pure function of its arguments. Layouts take turns, so
    every layout of the split is equally common. A `distractors` share of training documents
    gets `with_distractors` (drawn from its own stream: the documents without them, and every
    test document, are the same as with `distractors = 0`); a `rewrites` share, likewise, gets
    `with_rewrites`. `solutions = "calculator"` adds the line's `completion`, its
    `worked_solution` (the document is the same)."""
    layouts = layouts_of(split)
    layout = layouts[index % len(layouts)]
    rng = random.Random(f"invoices/{seed}/{split}/{index}")
    inv = make_invoice(rng, layout, computed_share)
    doc = RENDER[layout](inv, rng)
    extra = random.Random(f"invoices/{seed}/{split}/{index}/distractors")
    if split == "train" and extra.random() < distractors:
        doc = with_distractors(doc, inv, extra)
    other = random.Random(f"invoices/{seed}/{split}/{index}/rewrites")
    if split == "train" and other.random() < rewrites:
        doc = with_rewrites(doc, inv, other)
    row = {"id": f"{split}-{index:05d}", "split": split, "prompt": doc, "answer": inv.gold(), "layout": layout,
           "layout_group": "held_out" if layout in HELD_OUT_LAYOUTS else "seen", "amounts": inv.amounts,
           "number_format": inv.number_format}
    if solutions == "calculator":
        row["completion"] = worked_solution(inv)
    return row


def examples(split: str, n: int, seed: int = 0, computed_share: float = 0.3,
             avoid: frozenset[str] | set[str] = frozenset(), distractors: float = 0.0,
             rewrites: float = 0.0, solutions: str = "none") -> list[dict]:
    """`n` distinct examples of `split`, none whose document is in `avoid`."""
    out, seen, i = [], set(avoid), 0
    while len(out) < n:
        row = example(seed, split, i, computed_share, distractors, rewrites, solutions)
        i += 1
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(row)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write atomically: a killed run leaves the old file or none, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_invoices(out: str | Path, train: int, test: int, seed: int = 0, computed_share: float = 0.3,
                   distractors: float = 0.0, rewrites: float = 0.0, solutions: str = "none") -> dict:
    """DIR/train.jsonl, DIR/test.jsonl and DIR/all.jsonl (both, with their `split`); returns the counts."""
    if solutions not in SOLUTIONS:
        raise ConfigError(f"solutions {solutions!r} is not valid; choose one of: {', '.join(SOLUTIONS)}")
    shares = {"computed_share": computed_share, "distractors": distractors, "rewrites": rewrites}
    bad = {k: v for k, v in shares.items() if not 0 <= v <= 1}
    if train < 0 or test < 0 or bad:
        raise ConfigError(f"need train >= 0, test >= 0 and each share in [0, 1]; got train={train}, test={test}, "
                          + ", ".join(f"{k}={v}" for k, v in shares.items()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test_rows = examples("test", test, seed, computed_share, solutions=solutions)
    train_rows = examples("train", train, seed, computed_share, avoid={r["prompt"] for r in test_rows},
                          distractors=distractors, rewrites=rewrites, solutions=solutions)
    write_jsonl(out / "train.jsonl", train_rows)
    write_jsonl(out / "test.jsonl", test_rows)
    write_jsonl(out / "all.jsonl", train_rows + test_rows)
    return {"train": len(train_rows), "test": len(test_rows)}


GENERATORS = {"invoices": write_invoices}


@dataclass(frozen=True)
class MakeDataConfig:
    """A generated data set (the `make-data` verb, and a pipeline's `kind = "data"` stage)."""
    generator: str = option("invoices", "data set to generate", choices=tuple(GENERATORS))
    train: int = option(1000, "training lines (layouts: %s)" % ", ".join(TRAIN_LAYOUTS))
    test: int = option(300, "test lines (held-out layouts: %s)" % ", ".join(HELD_OUT_LAYOUTS))
    seed: int = option(0, "seed: every line is a pure function of (seed, split, index)")
    computed_share: float = option(0.3, "share of invoices with subtotal, tax or total left out (to be computed)")
    distractors: float = option(0.0, "share of training documents given generic extra lines to skip (a title "
                                "above the vendor, a department contact, a printed/sent date, a VAT id); "
                                "test documents never change")
    rewrites: float = option(0.0, "share of training documents whose vendor line carries its phone and whose "
                             "labelled invoice date is written as a phrase; test documents never change")
    solutions: str = option("none", "each line's worked gold completion (`completion`, what SFT with gold = N "
                            "trains on): none (the bare JSON answer) or calculator (<calc> calls compute the "
                            "amounts left out and the total, for a model run with tools = \"calculator\")",
                            choices=SOLUTIONS)
    out: str = option("data", "output folder: train.jsonl, test.jsonl and all.jsonl (both splits)")

    def __post_init__(self):
        check_choices(self)


def make_data(cfg: MakeDataConfig) -> dict:
    return GENERATORS[cfg.generator](cfg.out, cfg.train, cfg.test, cfg.seed, cfg.computed_share, cfg.distractors,
                                     cfg.rewrites, cfg.solutions)


# -- the report of a pipeline run ------------------------------------------------------------------
def _cell(rows: list[dict]) -> str:
    """'EM x/n [lo, hi], fields f [lo, hi]': exact match and field accuracy with 95% Wilson intervals
    (the field interval counts the n x 7 fields as trials, so it is narrower than a per-document one)."""
    from ponder.core.stats import wilson_ci

    n, ok = len(rows), sum(r["correct"] for r in rows)
    fields = round(sum(r["score"] for r in rows) * len(FIELDS))
    lo, hi = wilson_ci(ok, n)
    flo, fhi = wilson_ci(fields, n * len(FIELDS))
    return (f"{ok / n:.3f} [{lo:.2f}, {hi:.2f}] / {fields / (n * len(FIELDS)):.3f} "
            f"[{flo:.2f}, {fhi:.2f}] (n={n})")


def report(run_dir: str | Path) -> str:
    """A markdown table of a pipeline run's held-out evaluations: exact match / field accuracy per
    stage, overall and by layout, amounts (printed vs computed) and number format, with the stage's
    wall and CPU minutes."""
    run = Path(run_dir)
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    lines = ["| stage | slice | exact match [95% CI] / field accuracy [95% CI] |", "|---|---|---|"]
    for name in stages:
        ev, man = run / name / "eval.json", run / name / "manifest.json"
        if not ev.is_file():
            continue
        rows = json.loads(ev.read_text())["samples"]
        m = json.loads(man.read_text()) if man.is_file() else {}
        took = f" ({m['seconds'] / 60:.1f} min wall, {m['cpu_seconds'] / 60:.1f} CPU min)" if "cpu_seconds" in m else ""
        lines.append(f"| {name}{took} | all | {_cell(rows)} |")
        for key in ("layout", "amounts", "number_format"):
            for value in sorted({r["info"].get(key) for r in rows} - {None}):
                lines.append(f"| | {key}={value} | {_cell([r for r in rows if r['info'].get(key) == value])} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ponder make-data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", metavar="GENERATOR", help=f"data set to generate; one of: {', '.join(GENERATORS)}")
    C.add_arguments(ap, MakeDataConfig)
    args = ap.parse_args(argv)
    cfg = C.from_args(MakeDataConfig, args, generator=args.which)
    counts = make_data(cfg)
    print(f"wrote {counts['train']} train and {counts['test']} test lines to {cfg.out}")
    return 0


if __name__ == "__main__":  # python -m ponder.tasks.invoices RUN_DIR: the table of a pipeline run
    import sys
    print(report(sys.argv[1]))
