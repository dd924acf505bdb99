"""Ollama's Go TEMPLATE for a chat family, built from its role table (chat_family.py).

The Go template sees `.Messages` (each with `.Role`, `.Content`); Ollama merges consecutive
messages of the same role, and when the last message is the assistant's it continues that
message, so the template leaves the assistant's closing text off the last message and emits the
generation prompt only after a user (or system) message (ollama/ollama, template/ and
docs/template.md).
"""
from __future__ import annotations

from quantkit.backends.gguf.chat_family import Family


def go_template(family: Family, *, bos: str = "", eos: str = "", default_system: str | None = None) -> str:
    """Ollama's Go TEMPLATE for the family, built from its role table. No whitespace trimming anywhere:
    every character outside {{ }} is output, so the literal text is exactly the table's."""

    started = any("{bos}" in s for s in (*family.user, *family.assistant, *(family.system or ()), family.generation))

    def lit(s: str) -> str:
        s = s.replace("{eos}", eos)
        if started:
            s = s.replace("{bos}", "{{ if $started }}" + bos + "{{ end }}")
        else:
            s = s.replace("{bos}", bos)
        return s

    mark = "{{ $started = true }}" if started else ""
    out = []
    if started:
        out.append("{{ $started := false }}")
    if family.system is None:
        out.append('{{ $system := "" }}')
    out.append("{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}")
    if family.system is not None:
        first = family.first_system_prefix
        if default_system is not None:
            out.append('{{ if and (eq $i 0) (ne .Role "system") }}'
                       + lit(first if first is not None else family.system[0]) + default_system
                       + lit(family.system[1]) + mark + "{{ end }}")
        out.append('{{ if eq .Role "system" }}')
        if first is not None:
            out.append("{{ if eq $i 0 }}" + lit(first) + "{{ else }}" + lit(family.system[0]) + "{{ end }}")
        else:
            out.append(lit(family.system[0]))
        out.append("{{ .Content }}" + lit(family.system[1]) + mark)
    else:
        out.append('{{ if eq .Role "system" }}{{ $system = .Content }}')
    out.append('{{ else if eq .Role "user" }}' + lit(family.user[0]))
    if family.system is None:
        out.append("{{ if $system }}" + lit(family.merge_system[0]) + "{{ $system }}" + lit(family.merge_system[1])
                   + '{{ $system = "" }}{{ end }}')
    out.append("{{ .Content }}" + lit(family.user[1]) + mark)
    out.append('{{ else if eq .Role "assistant" }}' + lit(family.assistant[0]) + "{{ .Content }}")
    if family.assistant[1]:
        out.append("{{ if not $last }}" + lit(family.assistant[1]) + "{{ end }}")
    out.append(mark + "{{ end }}")
    if family.generation:
        out.append('{{ if and $last (ne .Role "assistant") }}' + lit(family.generation) + "{{ end }}")
    out.append("{{ end }}")
    return "".join(out)
