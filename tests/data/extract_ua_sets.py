import glob, random, yaml, json, re
import crawleruseragents as c
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
browsers, bots, libs = set(), set(), set()
for f in sorted(glob.glob("*.yml")):
    if f.startswith(("clienthints",)):
        continue
    data = yaml.load(open(f), Loader=Loader) or []
    for e in data:
        ua = e.get("user_agent")
        if not ua or "\n" in ua: continue
        if e.get("bot"):
            bots.add(ua); continue
        client = e.get("client") or {}
        dev = (e.get("device") or {}).get("type")
        if client.get("type") == "library":
            libs.add(ua); continue
        if (client.get("type") == "browser" or (client.get("type") == "mobile app" and ua.startswith("Mozilla/"))) and dev in ("desktop","smartphone","tablet","phablet"):
            browsers.add(ua)
for d in c.CRAWLER_USER_AGENTS_DATA:
    for ua in d.get("instances", []):
        if "\n" not in ua: bots.add(ua)
rnd = random.Random(5)
botty = sorted(u for u in browsers if re.search("bot", u, re.I))
rest = sorted(set(browsers) - set(botty))
sample = sorted(set(rnd.sample(rest, 12000)) | set(botty))
print(len(browsers), len(botty), len(sample), len(bots), len(libs))
open("/work/main/tests/data/ua_browsers.txt","w").write("\n".join(sample)+"\n")
open("/work/main/tests/data/ua_bots.txt","w").write("\n".join(sorted(bots | libs))+"\n")
