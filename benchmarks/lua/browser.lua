-- GET as a browser sends it: Host plus 16 headers, a cookie among them (about 1 KiB of
-- headers). wrk's default request has one header, which flatters per-header costs.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local h = wrk.headers
h["Connection"] = "keep-alive"
h["Cache-Control"] = "max-age=0"
h["sec-ch-ua"] = '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"'
h["sec-ch-ua-mobile"] = "?0"
h["sec-ch-ua-platform"] = '"Linux"'
h["Upgrade-Insecure-Requests"] = "1"
h["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
   .. "Chrome/124.0.0.0 Safari/537.36"
h["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
   .. "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
h["Sec-Fetch-Site"] = "same-origin"
h["Sec-Fetch-Mode"] = "navigate"
h["Sec-Fetch-User"] = "?1"
h["Sec-Fetch-Dest"] = "document"
h["Referer"] = "https://blog.example.com/posts/unix-domain-sockets-with-envoy/"
h["Accept-Encoding"] = "gzip, deflate, br, zstd"
h["Accept-Language"] = "en-US,en;q=0.9,de;q=0.8,fr;q=0.7"
h["Cookie"] = "_ga=GA1.1.1843920571.1714050000; _ga_7Q4X2LMN3P=GS1.1.1714050000.3.1.1714050321.0.0.0; "
   .. "theme=dark; lang=en; consent=eyJhbmFseXRpY3MiOnRydWUsIm1hcmtldGluZyI6ZmFsc2V9; "
   .. "session=9f8e7d6c5b4a39281706f5e4d3c2b1a0.eyJ1aWQiOjQyLCJleHAiOjE3MTQxMzY0MDB9.c2lnbmF0dXJl"
