"""modules/infotext_utils.py: quote/unquote of infotext values, parse_generation_parameters (prompt, negative
prompt, "Key: value" pairs, and the legacy "Hypernet: X" -> <hypernet:X:Y> append), and pasting, which then calls
every on_infotext_pasted callback with (infotext, params)."""
import json
import re

from modules import script_callbacks

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str):
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        res[k] = unquote(v) if v and v[0] == '"' and v[-1] == '"' else v
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    hypernet = res.get("Hypernet", None)
    if hypernet is not None:
        res["Prompt"] += f"""<hypernet:{hypernet}:{res.get("Hypernet strength", "1.0")}>"""
    return res


def paste(infotext: str) -> dict:
    """What the paste button does before filling the UI fields (connect_paste's paste_func)."""
    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    return params
