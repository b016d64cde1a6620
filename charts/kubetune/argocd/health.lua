-- Argo CD health for kubetune.io FineTuneJob, ConvertJob and ChatEndpoint (one script for the three kinds).
-- Only base-library functions are used: Argo CD runs health scripts without the standard libraries.
local hs = {status = "Progressing", message = "Waiting for the kubetune operator"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
-- A newer spec the operator has not seen yet: the rest of the status describes the previous one.
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local function condition(type_)
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == type_ then
        return c
      end
    end
  end
  return nil
end

local function is_true(type_)
  local c = condition(type_)
  return c ~= nil and c.status == "True"
end

local phase = obj.status.phase
local message = obj.status.message or ""

if phase == "Failed" or is_true("Failed") then
  local c = condition("Failed")
  if message == "" and c ~= nil then
    message = c.message or ""
  end
  return {status = "Degraded", message = message}
end

if obj.kind == "ChatEndpoint" then
  if phase == "Ready" and is_true("Ready") then
    return {status = "Healthy", message = message}
  end
  return {status = "Progressing", message = message}
end

if obj.kind == "FineTuneJob" and (phase == "Suspended" or is_true("Suspended")) then
  return {status = "Suspended", message = message}
end

if phase == "Succeeded" or is_true("Succeeded") then
  return {status = "Healthy", message = message}
end

-- Pending, Initializing, Running, Restarting: work in progress. Say how far, and whether a spec change waits.
if obj.status.progress ~= nil and obj.status.progress.stepDisplay ~= nil then
  message = message .. " (step " .. obj.status.progress.stepDisplay .. ")"
end
local applied = condition("SpecApplied")
if applied ~= nil and applied.status == "False" then
  message = message .. "; " .. (applied.message or "")
end
if obj.status.restarts ~= nil and obj.status.restarts > 0 then
  message = message .. "; restarts: " .. obj.status.restarts
end
return {status = "Progressing", message = message}
