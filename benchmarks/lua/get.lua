-- GET with wrk's default request (Host and nothing else). Extra headers come from wrk -H
-- (the "Connection: close" workload).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
