-- POST a body of N bytes (the script argument: wrk ... -s post.lua URL -- 16384).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

function init(args)
   local size = tonumber(args[1]) or 16384
   wrk.method = "POST"
   wrk.body = string.rep("x", size)
   wrk.headers["Content-Type"] = "application/octet-stream"
   -- wrk.init calls this, then builds the request once from the wrk table.
end
