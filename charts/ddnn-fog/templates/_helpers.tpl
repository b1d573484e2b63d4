{{/*
Names and labels shared by every template (Helm's best-practices shape).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "ddnn-fog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it already
holds the chart name, else <release>-<chart>. Cut to 63 characters (a DNS label).
*/}}
{{- define "ddnn-fog.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "ddnn-fog.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "ddnn-fog.labels" -}}
helm.sh/chart: {{ include "ddnn-fog.chart" . }}
{{ include "ddnn-fog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ddnn-fog
{{- end }}

{{/*
Selector labels of the operator's Pods. The component label keeps them apart from the tier Pods
the operator creates, which carry app.kubernetes.io/name=ddnn-fog too (with component server,
edge, device or broker, and app.kubernetes.io/managed-by=ddnn-operator).
*/}}
{{- define "ddnn-fog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ddnn-fog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "ddnn-fog.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ddnn-fog.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image: repository@digest, else repository:tag (default appVersion). */}}
{{- define "ddnn-fog.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Lease the replicas elect a leader with. */}}
{{- define "ddnn-fog.leaseName" -}}
{{- default (include "ddnn-fog.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
What values.schema.json cannot say: rules between keys. Each failure is one line naming the keys.
*/}}
{{- define "ddnn-fog.validate" -}}
{{- $le := .Values.leaderElection }}
{{- if and (gt (int .Values.replicaCount) 1) (not $le.enabled) }}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: several replicas would all write; enable leader election or set replicaCount: 1" (int .Values.replicaCount)) }}
{{- end }}
{{- if $le.enabled }}
{{- if not (and (gt (int64 $le.leaseDurationMs) (int64 $le.renewDeadlineMs)) (gt (int64 $le.renewDeadlineMs) (int64 $le.retryPeriodMs))) }}
{{- fail (printf "leaderElection needs leaseDurationMs > renewDeadlineMs > retryPeriodMs (got %v > %v > %v)" $le.leaseDurationMs $le.renewDeadlineMs $le.retryPeriodMs) }}
{{- end }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes that Service" }}
{{- end }}
{{- end }}
